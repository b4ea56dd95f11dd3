"""The offline stand-in for Sub-URMP: melodies rendered with FluidSynth, procedurally drawn players."""
