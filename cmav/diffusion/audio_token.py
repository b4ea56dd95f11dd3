"""AudioToken (Yariv et al., 2023) on cmav's own audio encoder: audio -> ONE token in a text prompt.

Data flow (only the embedder trains)::

    LMS -> frozen AudioEncoder -> block maps (C_b, F_b, T_b), several blocks
        -> mean over frequency, resampled to a common T, concatenated: (T, sum C_b)
        -> Linear -> GELU -> Linear to the text encoder's width: (T, D)
        -> attention pooling over time: ONE token (D,)
    "a photo of a <audio> player" -> token ids -> token-embedding lookup, the placeholder's row replaced
        by the audio token -> frozen text encoder -> frozen UNet (as for any prompt)

Loss: the diffusion model's own denoising loss + ``l1 * ||token||_1`` + (optional)
``classification * (1 - cos(token, mean input embedding of the label's words))``.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmav.diffusion.pipeline import TextToImageDiffusion
from cmav.models.encoders import AudioEncoder

DEFAULT_PLACEHOLDER = "<audio>"
OFFLINE_CAPTION = "a photo of a {} player"
"""Caption of the offline default model's training frames (``{}`` = the class's words)."""
DEFAULT_TEMPLATE = OFFLINE_CAPTION.format(DEFAULT_PLACEHOLDER)
"""The default pipeline's caption form, the audio token where the class's words were (a Stable
Diffusion folder takes the paper's ``"a photo of a <audio>"``)."""


@dataclass(frozen=True)
class EmbedderConfig:
    """Audio-token embedder options.

    ``blocks``: which :class:`AudioEncoder` block outputs are concatenated (0-based, negative
    counts from the end; ``None`` = every block); ``hidden_dim``: width of the MLP's hidden layer;
    ``time_steps``: common time length the block maps are resampled to (``None`` = the longest of
    the chosen blocks).
    """

    blocks: tuple[int, ...] | None = None
    hidden_dim: int = 512
    time_steps: int | None = None


@dataclass(frozen=True)
class PromptConfig:
    """Prompt template and the placeholder word in it that the audio token replaces."""

    template: str = DEFAULT_TEMPLATE
    placeholder: str = DEFAULT_PLACEHOLDER


@dataclass(frozen=True)
class TokenLossConfig:
    """Loss weights: ``l1`` on the token's L1 norm, ``classification`` on
    ``1 - cos(token, label words' mean input embedding)`` (0 = off)."""

    l1: float = 1e-4
    classification: float = 0.0


def label_words(class_name: str) -> str:
    """The words of a class folder name (``double_bass`` -> ``double bass``)."""
    return " ".join(class_name.replace("_", " ").replace("-", " ").split())


def unknown_words(tokenizer: Any, text: str) -> list[str]:
    """The white-space separated words of ``text`` that ``tokenizer`` maps (in part) to its unknown token."""
    unk = getattr(tokenizer, "unk_token_id", None)
    if unk is None:
        return []
    return [w for w in text.split() if unk in tokenizer(w, add_special_tokens=False).input_ids]


def resolve_blocks(blocks: Sequence[int] | None, n_blocks: int) -> list[int]:
    """0-based block indices (every block for ``None``); names the bad index."""
    if blocks is None:
        return list(range(n_blocks))
    out = []
    for b in blocks:
        if not -n_blocks <= int(b) < n_blocks:
            raise ValueError(f"embedder block {b} out of range for an audio encoder with {n_blocks} blocks")
        out.append(int(b) % n_blocks)
    if not out or len(set(out)) != len(out):
        raise ValueError(f"embedder blocks must be distinct and non-empty, got {list(blocks)}")
    return out


def time_sequence(maps: Sequence[Tensor], time_steps: int) -> Tensor:
    """Block maps ``(N, C_b, F_b, T_b)`` -> ``(N, time_steps, sum C_b)``: frequency averaged, time
    resampled (linear interpolation) to ``time_steps``, channels concatenated."""
    parts = []
    for m in maps:
        x = m.mean(dim=2)  # (N, C, T)
        if x.shape[-1] != time_steps:
            x = F.interpolate(x, size=time_steps, mode="linear", align_corners=False)
        parts.append(x)
    return torch.cat(parts, dim=1).transpose(1, 2)


class AttentionPool(nn.Module):
    """Attention pooling over time: ``w = softmax_t(score(h_t))``, output ``sum_t w_t h_t``.

    ``score`` is a Linear ``D -> 1``.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.score = nn.Linear(dim, 1)

    def weights(self, x: Tensor) -> Tensor:
        """``(N, T)`` pooling weights of a sequence ``(N, T, D)`` (rows sum to 1)."""
        return self.score(x).squeeze(-1).softmax(dim=-1)

    def forward(self, x: Tensor) -> Tensor:
        """``(N, T, D)`` -> ``(N, D)``."""
        return torch.einsum("nt,ntd->nd", self.weights(x), x)


class AudioTokenEmbedder(nn.Module):
    """The one trained module: block maps -> (T, D) sequence via Linear-GELU-Linear -> one token.

    Args:
        block_channels: channels of every block map it receives, in order.
        token_dim: the text encoder's embedding width.
        hidden_dim: the MLP's hidden width.
        time_steps: common time length of the sequence.
    """

    def __init__(self, block_channels: Sequence[int], token_dim: int, hidden_dim: int = 512,
                 time_steps: int = 22) -> None:  # fmt: skip
        super().__init__()
        if time_steps < 1:
            raise ValueError(f"time_steps must be >= 1, got {time_steps}")
        self.block_channels = [int(c) for c in block_channels]
        self.time_steps = int(time_steps)
        self.mlp = nn.Sequential(nn.Linear(sum(self.block_channels), hidden_dim), nn.GELU(),
                                 nn.Linear(hidden_dim, token_dim))  # fmt: skip
        self.pool = AttentionPool(token_dim)

    def init_like(self, table: Tensor) -> None:
        """Start near the word embeddings in ``table`` ``(V, D)``: the output layer's bias is their
        mean and its weights give outputs of their per-dimension spread."""
        last = self.mlp[-1]
        with torch.no_grad():
            last.bias.copy_(table.float().mean(0).to(last.bias))
            std = float(table.float().std(0).mean())
            last.weight.normal_(0.0, std / math.sqrt(last.in_features) * 2.0)

    def sequence(self, maps: Sequence[Tensor]) -> Tensor:
        """``(N, T, D)`` per-time-step embeddings before pooling."""
        if [m.shape[1] for m in maps] != self.block_channels:
            got = [m.shape[1] for m in maps]
            raise ValueError(f"expected block maps with channels {self.block_channels}, got {got}")
        return self.mlp(time_sequence(maps, self.time_steps))

    def forward(self, maps: Sequence[Tensor]) -> Tensor:
        """``(N, D)``: one token per item."""
        return self.pool(self.sequence(maps))


class PromptTemplate:
    """A prompt with one placeholder word whose input embedding is replaced by a token.

    The placeholder is added (as a special token) to a COPY of the tokenizer, so it is never split
    and the pipeline's tokenizer is left as it was; its id is then swapped for the padding id
    (always inside the embedding table) before the lookup, and its row of the lookup's output is
    overwritten by the token (:meth:`fill`).
    """

    def __init__(self, tokenizer: Any, template: str = DEFAULT_TEMPLATE, placeholder: str = DEFAULT_PLACEHOLDER,
                 max_length: int | None = None, source: str | None = None) -> None:  # fmt: skip
        if template.count(placeholder) != 1:
            raise ValueError(f"prompt template {template!r} must contain the placeholder {placeholder!r} exactly once")
        unknown = unknown_words(tokenizer, template.replace(placeholder, " "))
        if unknown:
            # an unknown word would reach the text encoder as <unk>, a word the model never saw
            raise ValueError(f"{source or 'pipeline'}: its tokenizer does not know the words {unknown} of the prompt "
                             f"template {template!r}")  # fmt: skip
        self.template, self.placeholder = template, placeholder
        tok = copy.deepcopy(tokenizer)
        tok.add_tokens([placeholder], special_tokens=True)
        ph_id = tok.convert_tokens_to_ids(placeholder)
        length = int(max_length or tok.model_max_length)
        ids = tok(template, padding="max_length", max_length=length, truncation=True, return_tensors="pt").input_ids[0]
        where = (ids == ph_id).nonzero().flatten()
        if len(where) != 1:
            raise ValueError(f"prompt template {template!r}: the placeholder is not within the first {length} tokens")
        self.position = int(where[0])
        safe = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.input_ids = torch.where(ids == ph_id, torch.full_like(ids, int(safe)), ids)
        """``(L,)`` ids of the template, the placeholder's swapped for the padding id."""

    def with_words(self, words: str) -> str:
        """The template with the placeholder replaced by ``words`` (the text-label prompt)."""
        return self.template.replace(self.placeholder, words)

    def fill(self, embeddings: Tensor, tokens: Tensor) -> Tensor:
        """``embeddings`` ``(N, L, D)`` with row :attr:`position` replaced by ``tokens`` ``(N, D)``."""
        p = self.position
        if tokens.shape[0] != embeddings.shape[0] or tokens.shape[-1] != embeddings.shape[-1]:
            raise ValueError(f"tokens {tuple(tokens.shape)} do not fit embeddings {tuple(embeddings.shape)}")
        return torch.cat([embeddings[:, :p], tokens[:, None].to(embeddings.dtype), embeddings[:, p + 1 :]], dim=1)


class AudioTokenModel(nn.Module):
    """Frozen :class:`AudioEncoder` + trained :class:`AudioTokenEmbedder` + frozen diffusion model.

    Args:
        audio_encoder: the sound classifier's encoder (frozen here, BatchNorm statistics included).
        diffusion: the text-to-image model (frozen here).
        embedder: embedder options.
        prompt: template and placeholder.
        class_names: class folder names; gives the label prompts and the classification term's targets.
    """

    def __init__(self, audio_encoder: AudioEncoder, diffusion: TextToImageDiffusion,
                 embedder: EmbedderConfig = EmbedderConfig(), prompt: PromptConfig = PromptConfig(),
                 class_names: Sequence[str] | None = None) -> None:  # fmt: skip
        super().__init__()
        self.audio_encoder = audio_encoder.requires_grad_(False).eval()
        self.diffusion = diffusion.freeze()
        self.blocks = resolve_blocks(embedder.blocks, len(audio_encoder.blocks))
        shapes = [audio_encoder.block_shapes[b] for b in self.blocks]
        steps = embedder.time_steps if embedder.time_steps is not None else max(s[2] for s in shapes)
        self.embedder = AudioTokenEmbedder([s[0] for s in shapes], diffusion.text_width, embedder.hidden_dim, steps)
        self.embedder.init_like(diffusion.input_embeddings().weight)
        self.prompt = PromptTemplate(diffusion.tokenizer, prompt.template, prompt.placeholder, diffusion.max_length,
                                     diffusion.source)  # fmt: skip
        self.class_names = list(class_names) if class_names is not None else None
        if self.class_names is not None:
            with torch.no_grad():
                table = torch.stack([diffusion.word_embedding(label_words(c)) for c in self.class_names]).float()
            self.register_buffer("label_embeddings", table.cpu(), persistent=False)

    def train(self, mode: bool = True) -> AudioTokenModel:
        super().train(mode)
        self.audio_encoder.eval()  # frozen parts stay in inference mode (BatchNorm, dropout)
        self.diffusion.eval()
        return self

    def token(self, audio: Tensor) -> Tensor:
        """``(N, D)`` audio tokens of LMS ``(N, 1, n_mels, frames)``."""
        with torch.no_grad():
            maps = self.audio_encoder.forward_features(audio).blocks
        return self.embedder([maps[b] for b in self.blocks])

    def condition(self, tokens: Tensor) -> Tensor:
        """``(N, L, D)`` text-encoder output of the template with ``tokens`` at the placeholder."""
        ids = self.prompt.input_ids.to(tokens.device).expand(tokens.shape[0], -1)
        return self.diffusion.encode_ids(ids, inject=lambda e: self.prompt.fill(e, tokens))

    def label_prompts(self, labels: Sequence[int]) -> list[str]:
        """The template with the label's words in place of the placeholder, per label."""
        if self.class_names is None:
            raise ValueError("label prompts need class_names")
        return [self.prompt.with_words(label_words(self.class_names[int(y)])) for y in labels]

    def loss(self, audio: Tensor, images: Tensor, labels: Tensor | None,
             weights: TokenLossConfig) -> tuple[Tensor, dict[str, Tensor]]:  # fmt: skip
        """Total loss and its parts (detached) for a batch of LMS, frames in [-1, 1] and labels."""
        token = self.token(audio)
        denoise = self.diffusion.denoising_loss(images, self.condition(token))
        l1 = token.abs().sum(-1).mean()
        loss = denoise + weights.l1 * l1
        logs = {"denoise": denoise.detach(), "token_l1": l1.detach()}
        if labels is not None and self.class_names is not None:
            cos = F.cosine_similarity(token.float(), self.label_embeddings[labels.long()].to(token.device), dim=-1)
            cl = (1.0 - cos).mean()
            logs["token_label_cos"] = cos.mean().detach()
            if weights.classification > 0:
                loss = loss + weights.classification * cl
        elif weights.classification > 0:
            raise ValueError("the classification term needs labels and class_names")
        return loss, logs


__all__ = [
    "AttentionPool",
    "AudioTokenEmbedder",
    "AudioTokenModel",
    "DEFAULT_PLACEHOLDER",
    "DEFAULT_TEMPLATE",
    "EmbedderConfig",
    "OFFLINE_CAPTION",
    "PromptConfig",
    "PromptTemplate",
    "TokenLossConfig",
    "label_words",
    "resolve_blocks",
    "time_sequence",
    "unknown_words",
]
