"""The diffusion-token branch: embedder, prompt injection, pipeline folders, training, metrics, ablation."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from cmav.diffusion import (
    AttentionPool,
    AudioTokenModel,
    EmbedderConfig,
    PixelDiffusionConfig,
    PromptConfig,
    PromptTemplate,
    TokenLossConfig,
    build_pixel_diffusion,
    label_words,
    load_pipeline,
)
from cmav.diffusion.audio_token import time_sequence
from cmav.metrics.token import (
    audio_image_consistency,
    audio_image_similarity,
    image_image_similarity,
    paired_win_rate,
    random_negatives,
)
from cmav.models import AudioEncoder

REPO = Path(__file__).resolve().parents[1]
CLASSES = ["violin", "double_bass", "flute"]
TINY = PixelDiffusionConfig(image_size=16, block_out_channels=(8, 16), layers_per_block=1, attention_heads=2,
                            norm_num_groups=8, text_width=16, text_layers=2, text_heads=2, max_length=10)  # fmt: skip

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore:.*does not have many workers.*"),
    pytest.mark.filterwarnings("ignore:.*module\\(s\\) in eval mode.*"),
    pytest.mark.filterwarnings("ignore:.*smaller than the logging interval.*"),
    pytest.mark.filterwarnings("ignore:.*localisation metrics skipped.*"),  # the retrieval scorer, on fixture data
]


@pytest.fixture(scope="module")
def diffusion():
    torch.manual_seed(0)
    return build_pixel_diffusion([f"a photo of a {label_words(c)} player" for c in CLASSES], TINY).freeze()


def tiny_encoder() -> AudioEncoder:
    torch.manual_seed(1)
    return AudioEncoder(input_shape=(1, 32, 16), n_blocks=3, base_channels=4, max_channels=16, feature_dim=8,
                        n_classes=len(CLASSES)).eval()  # fmt: skip


def token_model(diffusion, template: str = "a photo of a <audio> player") -> AudioTokenModel:
    return AudioTokenModel(tiny_encoder(), diffusion, EmbedderConfig(hidden_dim=16), PromptConfig(template), CLASSES)


# ---------------------------------------------------------------- embedder


def test_attention_pooling_on_a_hand_built_sequence():
    pool = AttentionPool(2)
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]])
    with torch.no_grad():
        pool.score.weight.copy_(torch.tensor([[math.log(3.0), 0.0]]))
        pool.score.bias.zero_()
    # scores ln3, 0, 2 ln3 -> weights 3/13, 1/13, 9/13
    assert torch.allclose(pool.weights(x), torch.tensor([[3 / 13, 1 / 13, 9 / 13]]))
    assert torch.allclose(pool(x), torch.tensor([[21 / 13, 19 / 13]]))
    with torch.no_grad():
        pool.score.weight.zero_()
        pool.score.bias.fill_(5.0)
    assert torch.allclose(pool(x), torch.tensor([[1.0, 1.0]]))  # equal scores: the plain mean


def test_block_maps_are_frequency_pooled_time_aligned_and_concatenated():
    a = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]])  # (1, C=1, F=2, T=2): frequency mean = [2, 3]
    b = torch.tensor([[[[5.0, 7.0]], [[1.0, 1.0]]]])  # (1, C=2, F=1, T=2)
    seq = time_sequence([a, b], 2)
    assert seq.shape == (1, 2, 3)
    assert torch.equal(seq[0], torch.tensor([[2.0, 5.0, 1.0], [3.0, 7.0, 1.0]]))
    c = torch.tensor([[[[4.0]]]])  # T=1 -> held constant over 2 steps
    assert torch.equal(time_sequence([c], 2)[0, :, 0], torch.tensor([4.0, 4.0]))


def test_embedder_concatenates_the_chosen_blocks(diffusion):
    enc = tiny_encoder()
    model = AudioTokenModel(enc, diffusion, EmbedderConfig(blocks=(0, -1), hidden_dim=16))
    assert model.blocks == [0, 2]
    assert model.embedder.block_channels == [enc.block_shapes[0][0], enc.block_shapes[2][0]]
    assert model.embedder.time_steps == enc.block_shapes[0][2]  # the longest
    assert model.token(torch.randn(3, 1, 32, 16)).shape == (3, TINY.text_width)
    with pytest.raises(ValueError, match="block 5 out of range"):
        AudioTokenModel(enc, diffusion, EmbedderConfig(blocks=(5,)))


def test_embedder_time_steps_zero_is_refused_not_taken_for_the_default(diffusion):
    """time_steps=None is the longest block's length; 0 is a mistake, refused by the embedder's check
    (it used to be read as None: ``time_steps or longest``)."""
    with pytest.raises(ValueError, match="time_steps must be >= 1, got 0"):
        AudioTokenModel(tiny_encoder(), diffusion, EmbedderConfig(hidden_dim=16, time_steps=0))
    model = AudioTokenModel(tiny_encoder(), diffusion, EmbedderConfig(hidden_dim=16, time_steps=3))
    assert model.embedder.time_steps == 3


# ---------------------------------------------------------------- prompt


def test_placeholder_is_replaced_at_its_position(diffusion):
    prompt = PromptTemplate(diffusion.tokenizer, "a photo of a <audio> player", "<audio>", diffusion.max_length)
    # <|startoftext|> a photo of a <audio> player <|endoftext|> ...
    assert prompt.position == 5
    assert "<audio>" not in diffusion.tokenizer.get_vocab()  # the pipeline's tokenizer is untouched
    table = diffusion.input_embeddings().weight
    emb = table[prompt.input_ids].unsqueeze(0)
    token = torch.full((1, table.shape[1]), 7.0)
    filled = prompt.fill(emb, token)
    assert torch.equal(filled[0, 5], token[0])
    keep = [i for i in range(emb.shape[1]) if i != 5]
    assert torch.equal(filled[0, keep], emb[0, keep])
    with pytest.raises(ValueError, match="exactly once"):
        PromptTemplate(diffusion.tokenizer, "a photo of a player", "<audio>")


def test_prompt_template_refuses_words_the_tokenizer_does_not_know(diffusion, tmp_path):
    """The offline tokenizer knows only its captions' words: any other word of a template would reach
    the text encoder as <unk> (seen: 'A picture of <audio>' -> a <unk> of ...)."""
    unknown = r"does not know the words \['picture'\] of the prompt template 'A picture of <audio>'"
    with pytest.raises(ValueError, match=unknown):
        PromptTemplate(diffusion.tokenizer, "A picture of <audio>", "<audio>", diffusion.max_length)
    loaded = load_pipeline(diffusion.save(tmp_path / "pipe"))
    with pytest.raises(ValueError, match=r"pipe: its tokenizer does not know the words \['sound', 'player.'\]"):
        token_model(loaded, "a sound of a <audio> player.")
    assert token_model(loaded, "A PHOTO of a <audio>").prompt.position == 5  # the tokenizer lower-cases


def test_a_token_equal_to_a_word_embedding_gives_that_words_prompt(diffusion):
    model = token_model(diffusion)
    violin = diffusion.word_embedding("violin").unsqueeze(0)
    with torch.no_grad():
        injected = model.condition(violin)
        text = diffusion.text_embeddings(["a photo of a violin player"])
        other = model.condition(diffusion.word_embedding("flute").unsqueeze(0))
    assert torch.allclose(injected, text, atol=1e-6)
    # causal text encoder: the positions before the placeholder do not see the token, the rest do
    assert torch.allclose(other[:, :5], text[:, :5], atol=1e-6)
    assert not torch.allclose(other[:, 5:], text[:, 5:], atol=1e-3)
    assert model.label_prompts([1]) == ["a photo of a double bass player"]


# ---------------------------------------------------------------- training signal


def test_gradients_only_reach_the_embedder(diffusion):
    model = token_model(diffusion).train()
    assert not model.audio_encoder.training and not model.diffusion.training
    loss, logs = model.loss(torch.randn(4, 1, 32, 16), torch.rand(4, 3, 16, 16) * 2 - 1, torch.tensor([0, 1, 2, 0]),
                            TokenLossConfig(l1=1e-3, classification=0.5))  # fmt: skip
    loss.backward()
    assert set(logs) == {"denoise", "token_l1", "token_label_cos"}
    frozen = list(model.audio_encoder.named_parameters()) + list(model.diffusion.named_parameters())
    assert frozen and all(p.grad is None and not p.requires_grad for _, p in frozen)
    trained = list(model.embedder.named_parameters())
    assert all(p.requires_grad and p.grad is not None and p.grad.abs().sum() > 0 for _, p in trained), [
        n for n, p in trained if p.grad is None or p.grad.abs().sum() == 0]  # fmt: skip
    assert {n.split(".")[0] for n, p in model.named_parameters() if p.requires_grad} == {"embedder"}


def test_loss_terms_follow_their_weights(diffusion):
    model = token_model(diffusion).eval()
    audio, images, labels = torch.randn(2, 1, 32, 16), torch.zeros(2, 3, 16, 16), torch.tensor([0, 2])
    torch.manual_seed(3)
    base, logs = model.loss(audio, images, labels, TokenLossConfig(l1=0.0, classification=0.0))
    torch.manual_seed(3)
    full, _ = model.loss(audio, images, labels, TokenLossConfig(l1=0.1, classification=2.0))
    expected = base + 0.1 * logs["token_l1"] + 2.0 * (1 - logs["token_label_cos"])
    assert torch.allclose(full, expected, atol=1e-5)
    assert torch.allclose(base, logs["denoise"])


# ---------------------------------------------------------------- pipeline folders


def test_saved_and_reloaded_pipeline_gives_identical_images(diffusion, tmp_path):
    folder = diffusion.save(tmp_path / "pipe")
    assert {p.name for p in folder.iterdir()} == {"unet", "text_encoder", "tokenizer", "scheduler", "model_index.json"}
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "CmavPixelDiffusionPipeline"
    assert index["unet"] == ["diffusers", "UNet2DConditionModel"]
    again = load_pipeline(folder)
    prompts = ["a photo of a violin player", "a photo of a flute player", ""]
    assert torch.equal(again.tokenize(prompts), diffusion.tokenize(prompts))
    with torch.no_grad():
        cond_a, cond_b = diffusion.text_embeddings(prompts), again.text_embeddings(prompts)
    assert torch.equal(cond_a, cond_b)
    for scheduler in ("ddim", "ddpm"):
        a = diffusion.sample(cond_a, 2.0, 3, scheduler, torch.Generator().manual_seed(5))
        b = again.sample(cond_b, 2.0, 3, scheduler, torch.Generator().manual_seed(5))
        assert a.shape == (3, 3, 16, 16) and torch.equal(a, b), scheduler
        assert a.abs().max() <= 1.0
    # the starting noise is drawn before batching: a deterministic sampler ignores the batch size
    c = again.sample(cond_b, 2.0, 3, "ddim", torch.Generator().manual_seed(5), batch_size=2)
    d = again.sample(cond_b, 2.0, 3, "ddim", torch.Generator().manual_seed(5))
    assert torch.allclose(c, d, atol=1e-4)
    assert not any(p.requires_grad for p in again.parameters())


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # diffusers' Euler/DPM on numpy 2
def test_every_sampler_but_pndm_starts_from_the_last_training_timestep(diffusion, tmp_path):
    """diffusers' default 'leading' spacing starts T/steps - 1 timesteps early (980 of 1000 at 50
    steps), where pure noise is taken for a partly clean sample; samplers use 'trailing', also on
    folders saved before (their scheduler_config.json says 'leading'). PNDM is the exception: it
    keeps 'leading' (first step T - T/steps), whatever the folder says, because 'trailing' PNDM
    fails on a schedule ending at near-pure noise (see the oracle test below)."""
    from cmav.diffusion import TextToImageDiffusion
    from cmav.diffusion.pipeline import SCHEDULERS, sampler_spacing

    assert {s: sampler_spacing(s) for s in SCHEDULERS} == {
        "ddim": "trailing", "ddpm": "trailing", "pndm": "leading", "euler": "trailing", "dpm": "trailing"}  # fmt: skip
    folder = diffusion.save(tmp_path / "pipe")
    config = folder / "scheduler" / "scheduler_config.json"
    config.write_text(json.dumps({**json.loads(config.read_text()), "timestep_spacing": "leading"}))
    model = load_pipeline(folder)
    # the offline default's folders say 'trailing': the rule does not follow the folder either way
    trailing = TextToImageDiffusion(model.unet, model.text_encoder, model.tokenizer,
                                    {**model.scheduler_config, "timestep_spacing": "trailing"})  # fmt: skip
    n_train = model.scheduler_config["num_train_timesteps"]
    assert model.scheduler_config["steps_offset"] == 0
    first = {"trailing": lambda steps: n_train - 1, "leading": lambda steps: n_train - n_train // steps}
    seen: list[int] = []
    handle = model.unet.register_forward_pre_hook(lambda _m, args: seen.append(int(args[1])))
    try:
        with torch.no_grad():
            cond = model.text_embeddings(["a photo of a violin player"])
        for scheduler in SCHEDULERS:
            for pipe, steps in ((model, 10), (model, 50), (trailing, 10)):
                seen.clear()
                pipe.sample(cond, 1.0, steps, scheduler, torch.Generator().manual_seed(0))
                assert seen[0] == first[sampler_spacing(scheduler)](steps), (scheduler, steps, seen[:3])
    finally:
        handle.remove()
    # PNDM's multistep start needs 4 steps: fewer are refused by name, not a numpy broadcasting error
    with pytest.raises(ValueError, match="the pndm sampler needs steps >= 4, got 3"):
        model.sample(cond, 1.0, 3, "pndm", torch.Generator().manual_seed(0))
    assert model.sample(cond, 1.0, 4, "pndm", torch.Generator().manual_seed(0)).shape[0] == 1


def test_latent_pipeline_with_a_vae_round_trips_through_its_folder(diffusion, tmp_path):
    """The Stable Diffusion case: a vae/ part, the UNet works on its latents (tiny, random weights)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from cmav.diffusion import TextToImageDiffusion

    torch.manual_seed(2)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4, norm_num_groups=8, sample_size=16)
    unet = UNet2DConditionModel(sample_size=8, in_channels=4, out_channels=4, block_out_channels=(8, 16),
                                layers_per_block=1, norm_num_groups=8, cross_attention_dim=TINY.text_width,
                                attention_head_dim=2, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"))  # fmt: skip
    latent = TextToImageDiffusion(unet, diffusion.text_encoder, diffusion.tokenizer, diffusion.scheduler_config,
                                  vae=vae).freeze()  # fmt: skip
    assert latent.image_size == 16 and latent.latent_scale == 2
    folder = latent.save(tmp_path / "sd")
    assert json.loads((folder / "model_index.json").read_text())["_class_name"] == "StableDiffusionPipeline"
    again = load_pipeline(folder)
    assert again.vae is not None
    with torch.no_grad():
        cond = again.text_embeddings(["a photo of a violin player"])
        loss = again.denoising_loss(torch.zeros(1, 3, 32, 32), cond)  # frames resized to 16 px, then encoded
    assert torch.isfinite(loss)
    a = latent.sample(cond, 2.0, 2, "ddim", torch.Generator().manual_seed(0))
    b = again.sample(cond, 2.0, 2, "ddim", torch.Generator().manual_seed(0))
    assert a.shape == (1, 3, 16, 16) and torch.equal(a, b)
    with pytest.raises(ValueError, match="UNet takes 3 channels, expected the VAE's latent_channels 4"):
        TextToImageDiffusion(diffusion.unet, diffusion.text_encoder, diffusion.tokenizer, diffusion.scheduler_config,
                             vae=vae)  # fmt: skip


class NoiseOracle(torch.nn.Module):
    """A stand-in UNet that knows the one clean sample ``x0``: it returns the exact noise of its input
    (epsilon prediction), so a correct sampler ends at ``x0`` whatever its starting noise."""

    def __init__(self, unet: torch.nn.Module, alphas_cumprod: torch.Tensor, x0: torch.Tensor) -> None:
        super().__init__()
        self.config = unet.config
        self.alphas_cumprod = alphas_cumprod.double()
        self.x0 = x0.double()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # TextToImageDiffusion.device reads a parameter

    def forward(self, x, t, encoder_hidden_states=None):
        from types import SimpleNamespace

        a = self.alphas_cumprod[round(float(t))]
        return SimpleNamespace(sample=((x.double() - a.sqrt() * self.x0) / (1 - a).sqrt()).float())


@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")  # diffusers' Euler/DPM on numpy 2
def test_every_sampler_returns_the_clean_sample_given_the_exact_noise(diffusion):
    """On the offline schedule (squaredcos_cap_v2: alpha_bar(999) = 2.4e-9) every offered sampler, fed
    the exact noise of one known x0, must end at x0. PNDM under 'trailing' spacing did not (mean
    |x - x0| 1.0 at 10 steps, 0.73 at 50): its first steps divide by sqrt(alpha_bar(999))."""
    from cmav.diffusion import TextToImageDiffusion
    from cmav.diffusion.pipeline import MIN_STEPS, SCHEDULERS

    x0 = torch.full((1, 3, 16, 16), 0.5)
    x0[..., :8] = -0.5
    parts = (diffusion.unet, diffusion.text_encoder, diffusion.tokenizer)
    model = TextToImageDiffusion(*parts, diffusion.scheduler_config)
    assert model.scheduler_config["beta_schedule"] == "squaredcos_cap_v2"
    assert float(model.noise_scheduler.alphas_cumprod[-1]) < 1e-8
    model.unet = NoiseOracle(diffusion.unet, model.noise_scheduler.alphas_cumprod, x0)
    cond = torch.zeros(1, diffusion.max_length, diffusion.text_width)
    errors = {}
    for scheduler in SCHEDULERS:
        for steps in sorted({MIN_STEPS.get(scheduler, 1), 10, 50}):
            x = model.sample(cond, 1.0, steps, scheduler, torch.Generator().manual_seed(0))
            errors[scheduler, steps] = float((x - x0).abs().mean())
    assert all(e < 0.02 for e in errors.values()), errors


def test_an_unsupported_noise_schedule_is_refused_naming_the_folder(diffusion, tmp_path):
    """A beta_schedule diffusers does not know: the scheduler folder named, not a bare NotImplementedError;
    one only the DDPM scheduler knows (sigmoid): the sampler and the folder named when it samples."""

    def with_schedule(name: str, beta_schedule: str) -> Path:
        folder = diffusion.save(tmp_path / name)
        config = folder / "scheduler" / "scheduler_config.json"
        config.write_text(json.dumps({**json.loads(config.read_text()), "beta_schedule": beta_schedule}))
        return folder

    with pytest.raises(ValueError, match=r"cosine/scheduler: cannot be loaded \(cosine is not implemented"):
        load_pipeline(with_schedule("cosine", "cosine"))
    model = load_pipeline(with_schedule("sigmoid", "sigmoid"))
    cond = torch.zeros(1, diffusion.max_length, diffusion.text_width)
    assert model.sample(cond, 1.0, 1, "ddpm").shape == (1, 3, 16, 16)
    with pytest.raises(ValueError, match=r"sigmoid: the ddim sampler cannot use its noise schedule \(sigmoid is not"):
        model.sample(cond, 1.0, 1, "ddim")


def test_pixel_diffusion_refuses_an_unknown_prediction_type_or_noise_schedule():
    """Misspelt, these used to build and fail only at the first training step (or deep in diffusers)."""
    import dataclasses

    captions = ["a photo of a violin player"]
    with pytest.raises(ValueError, match=r"prediction_type 'v' is not one of \('epsilon', 'v_prediction', 'sample'\)"):
        build_pixel_diffusion(captions, dataclasses.replace(TINY, prediction_type="v"))
    with pytest.raises(ValueError, match=r"beta_schedule 'cosine' is not one of \('linear', 'scaled_linear', "
                                         r"'squaredcos_cap_v2'\)"):  # fmt: skip
        build_pixel_diffusion(captions, dataclasses.replace(TINY, beta_schedule="cosine"))


def test_pipeline_folder_errors_name_the_folder_and_the_missing_part(diffusion, tmp_path):
    with pytest.raises(FileNotFoundError, match="pipeline folder not found"):
        load_pipeline(tmp_path / "nowhere")
    folder = diffusion.save(tmp_path / "pipe")
    shutil.rmtree(folder / "unet")
    with pytest.raises(FileNotFoundError, match=r"pipe: not a text-to-image pipeline folder: missing unet/"):
        load_pipeline(folder)
    folder = diffusion.save(tmp_path / "pipe2")
    (folder / "scheduler" / "scheduler_config.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"scheduler: missing scheduler_config.json"):
        load_pipeline(folder)
    folder = diffusion.save(tmp_path / "pipe3")
    (folder / "unet" / "config.json").write_text("{ not json")
    with pytest.raises(ValueError, match=r"pipe3/unet: cannot be loaded"):
        load_pipeline(folder)


# ---------------------------------------------------------------- metrics


def test_random_negatives_never_pick_the_item_itself():
    neg = random_negatives(5, 200, seed=1)
    assert neg.shape == (5, 200)
    for i in range(5):
        assert i not in neg[i].tolist() and set(neg[i].tolist()) == set(range(5)) - {i}
    assert torch.equal(neg, random_negatives(5, 200, seed=1))
    with pytest.raises(ValueError, match="pool of at least 2"):
        random_negatives(1, 3)


def test_win_rates_on_hand_built_scores():
    # row i: query i; its own candidate is column i
    scores = torch.tensor([[0.9, 0.1, 0.5],
                           [0.2, 0.2, 0.8],
                           [0.3, 0.6, 0.4]])  # fmt: skip
    neg = torch.tensor([[1, 2], [0, 2], [0, 1]])
    # row 0: 0.9 beats 0.1 and 0.5 (2 wins); row 1: 0.2 ties 0.2 (1/2), loses to 0.8; row 2: 0.4 beats 0.3, loses to 0.6
    assert paired_win_rate(scores, neg) == pytest.approx((2 + 0.5 + 1) / 6)
    assert audio_image_similarity(scores, neg) == pytest.approx(3.5 / 6)
    assert paired_win_rate(torch.ones(3, 3), neg) == 0.5  # constant similarity = chance


def test_image_image_similarity_uses_cosine_of_judge_features():
    real = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    gen = torch.tensor([[2.0, 0.1], [0.0, 3.0], [-1.0, 0.0]])
    neg = torch.tensor([[1], [2], [0]])
    # gen0 closer to real0 than real1 (win); gen1: cos(real1)=1 > cos(real2)=0.707 (win);
    # gen2 = -x: cos(real2) = -0.707 > cos(real0) = -1 (win)
    assert image_image_similarity(gen, real, neg) == 1.0
    assert image_image_similarity(-gen, real, neg) == 0.0
    assert audio_image_consistency(torch.tensor([0, 2, 2, 1]), torch.tensor([0, 2, 1, 1])) == 0.75


def test_each_scorer_sees_frames_at_its_own_size(monkeypatch):
    """Generated frames, real frames, the image judge and the retrieval model may all have different
    sides: every frame reaches each scorer at the side that scorer was trained on."""
    from cmav.evaluation.token import score_images
    from cmav.tasks import ClassifierTask
    from cmav.tasks.retrieval import RetrievalTask

    torch.manual_seed(0)
    small = dict(n_blocks=2, base_channels=4, max_channels=8, feature_dim=8, dropout=0.0)
    judge = ClassifierTask(modality="image", image_size=16, class_names=CLASSES,
                           image_judge={**small, "block_dropout": 0.0}).eval()  # fmt: skip
    retrieval = RetrievalTask(image_size=24, input_shape=[1, 32, 16], n_classes=len(CLASSES), class_names=CLASSES,
                              audio_encoder=small, image_encoder=small, head=dict(embed_dim=8, hidden_dim=8),
                              log_heatmaps=False).eval()  # fmt: skip
    sides: dict[str, set] = {"judge": set(), "retrieval": set()}
    for name, net in (("judge", judge.model), ("retrieval", retrieval.model.image_encoder)):
        for conv in (m for m in net.modules() if isinstance(m, torch.nn.Conv2d) and m.in_channels == 3):
            conv.register_forward_pre_hook(lambda _m, args, name=name: sides[name].add(tuple(args[0].shape[-2:])))
    n = 6
    labels = torch.arange(n) % len(CLASSES)
    m = score_images(torch.rand(n, 3, 20, 20) * 2 - 1, torch.randn(n, 1, 32, 16), labels,
                     torch.rand(n, 3, 28, 28) * 2 - 1, judge, retrieval, CLASSES, n_negatives=2)  # fmt: skip
    assert sides == {"judge": {(16, 16)}, "retrieval": {(24, 24)}}
    assert 0 <= m["AIS"] <= 1 and 0 <= m["IIS"] <= 1 and m["n_items"] == n


# ---------------------------------------------------------------- training, checkpoints, generation, ablation

CONFIG = REPO / "experiments" / "ablations" / "token.yaml"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> dict:
    """The quick preset of the token grid on a 13-class fixture (2 tracks x 2 chunks), every stage cut to
    a few steps: sound classifier, judges, offline diffusion model, audio token, S2I-C, scores, table."""
    from cmav.ablation import load_grid, run_ablation

    from fixtures import make_suburmp_tracks

    base = tmp_path_factory.mktemp("token")
    data = make_suburmp_tracks(base / "data", tracks=(0, 1), chunks=2)
    cfg = load_grid(CONFIG, "quick")
    cfg["data"]["root"] = str(data)
    cfg["data"]["batch_size"] = 16
    for stage in cfg["stages"].values():
        stage["steps"] = 3
    cfg["evaluation"].update(per_class=1, steps=2, n_negatives=3)
    out = base / "out"
    return {"result": run_ablation(cfg, out_dir=out), "out": out, "data": data, "cfg": cfg}


def test_quick_token_grid_writes_one_table_of_three_methods(quick_run):
    out, result = quick_run["out"], quick_run["result"]
    for name in ("table.md", "table.csv", "metrics.png", "samples.png", "results.json", "config.yaml"):
        assert (out / name).is_file(), name
    assert [r["variant"] for r in result["rows"]] == ["audio token", "text label", "S2I-C"]
    for r in result["runs"]:
        m = r["metrics"]
        assert 0 <= m["AIS"] <= 1 and 0 <= m["IIS"] <= 1 and 0 <= m["AIC"] <= 1 and m["FID"] >= 0
        assert m["n_items"] == 13
    md = (out / "table.md").read_text()
    assert "| audio token | 1 |" in md and "AIC target" in md and "not Inception FID" in md
    assert (out / "diffusion_base" / "pipeline" / "unet" / "config.json").is_file()


def test_token_training_leaves_the_encoder_and_the_diffusion_model_untouched(quick_run):
    from cmav.tasks.audio_token import pipeline_fingerprint
    from cmav.tasks.classifier import _load_checkpoint

    out, seed = quick_run["out"], quick_run["cfg"]["seeds"][0]
    tok = _load_checkpoint(out / "runs" / "audio_token" / f"seed{seed}" / "token.ckpt")
    clf = _load_checkpoint(out / "judges" / f"audio_classifier_seed{seed}.ckpt")
    state = tok["state_dict"]
    assert not [k for k in state if k.startswith("model.diffusion.")]  # the pipeline folder holds it
    encoder = {k[len("model.audio_encoder."):]: v for k, v in state.items() if k.startswith("model.audio_encoder.")}
    original = {k[len("model."):]: v for k, v in clf["state_dict"].items() if k.startswith("model.")}
    assert encoder.keys() == original.keys() and all(torch.equal(encoder[k], original[k]) for k in encoder)
    # one optimiser, over the embedder's parameters only
    n_embedder = sum(1 for k in state if k.startswith("model.embedder."))
    assert len(tok["optimizer_states"][0]["state"]) == n_embedder
    pipe = out / "diffusion_base" / "pipeline"
    assert tok["cmav_audio_token"] == {"pipeline": str(pipe), "fingerprint": pipeline_fingerprint(pipe)}


def test_token_checkpoint_reloads_and_generates(quick_run, tmp_path):
    from cmav.evaluation.token import generate_from_audio_token, token_images
    from cmav.tasks.audio_token import is_audio_token_checkpoint, load_audio_token

    from fixtures import write_wav

    out, seed = quick_run["out"], quick_run["cfg"]["seeds"][0]
    ckpt = out / "runs" / "audio_token" / f"seed{seed}" / "token.ckpt"
    assert is_audio_token_checkpoint(ckpt) and not is_audio_token_checkpoint(out / "judges" / "image_judge.ckpt")
    task = load_audio_token(ckpt)
    assert not task.training and not any(p.requires_grad for p in task.model.diffusion.parameters())
    audio = torch.randn(2, *task.model.audio_encoder.input_shape)
    a = token_images(task.model, audio, seed=3, steps=2)
    b = token_images(load_audio_token(ckpt).model, audio, seed=3, steps=2)
    assert a.shape == (2, 3, 32, 32) and torch.equal(a, b)
    wav = write_wav(tmp_path / "clip.wav", seconds=1.0, freq=440.0)
    paths, notes = generate_from_audio_token(ckpt, wav, n=3, seed=0, output_dir=tmp_path / "gen", steps=2,
                                             scheduler="ddpm", device="cpu")  # fmt: skip
    assert [p.name for p in paths] == ["sample_00.png", "sample_01.png", "sample_02.png", "grid.png"]
    assert all(p.is_file() for p in paths) and any("first 0.5 s" in n for n in notes)
    with pytest.raises(FileNotFoundError, match="pipeline folder .*nowhere does not exist"):
        load_audio_token(ckpt, pipeline=tmp_path / "nowhere")
    # the same through `cmav generate`, which reads the checkpoint's kind
    from cmav.cli.main import main as cmav_main

    assert cmav_main(["generate", "--ckpt", str(ckpt), "--audio", str(wav), "-n", "2", "--steps", "2",
                      "--scheduler", "ddpm", "-o", str(tmp_path / "cli")]) == 0  # fmt: skip
    assert sorted(p.name for p in (tmp_path / "cli").glob("*.png")) == ["grid.png", "sample_00.png", "sample_01.png"]


def test_the_api_generates_from_an_audio_token_as_the_cli_does(quick_run, tmp_path):
    import cmav
    from cmav.data.errors import DataWarning
    from cmav.evaluation.generate import front_end_of, wav_to_features
    from cmav.evaluation.token import token_images

    from fixtures import write_wav

    out, seed = quick_run["out"], quick_run["cfg"]["seeds"][0]
    ckpt = out / "runs" / "audio_token" / f"seed{seed}" / "token.ckpt"
    model = cmav.load(ckpt)
    assert model.kind == "audio_token"
    wav = write_wav(tmp_path / "clip.wav", seconds=1.0, freq=440.0)
    images = cmav.sound_to_image(model, wav, n=2, seed=4, diffusion={"steps": 2})
    assert images.shape == (2, 2, 3, 32, 32)
    with pytest.warns(DataWarning, match="using its first 0.5 s"):
        first = cmav.sound_to_image(model, wav, n=2, seed=4, max_chunks=1, diffusion={"steps": 2})
    lms, _ = wav_to_features(wav, *front_end_of(ckpt))
    torch.testing.assert_close(first[0], token_images(model.task.model, lms.repeat(2, 1, 1, 1), seed=4, steps=2))
    with pytest.raises(ValueError, match="an audio-token model has no inference condition"):
        cmav.sound_to_image(model, wav, inference_condition="own")
    # the CLI's flag name, or a key token_images sets itself: named, not a TypeError from deep inside
    with pytest.raises(ValueError, match=r"unknown diffusion setting\(s\) \['guidance'\].*guidance_scale"):
        cmav.sound_to_image(model, wav, diffusion={"guidance": 3.0})
    with pytest.raises(ValueError, match=r"unknown diffusion setting\(s\) \['seed'\]"):
        cmav.sound_to_image(model, wav, diffusion={"seed": 1})


def test_token_checkpoint_warns_on_another_pipeline(quick_run, tmp_path):
    from cmav.tasks.audio_token import load_audio_token

    out, seed = quick_run["out"], quick_run["cfg"]["seeds"][0]
    other = tmp_path / "other"
    shutil.copytree(out / "diffusion_base" / "pipeline", other)
    cfg = json.loads((other / "scheduler" / "scheduler_config.json").read_text())
    cfg["beta_end"] = 0.03
    (other / "scheduler" / "scheduler_config.json").write_text(json.dumps(cfg))
    with pytest.warns(UserWarning, match="not the pipeline folder"):
        load_audio_token(out / "runs" / "audio_token" / f"seed{seed}" / "token.ckpt", pipeline=other)


def test_a_pipeline_that_is_no_folder_is_named_as_given_or_as_stored(quick_run, tmp_path):
    """--pipeline given as a file (the checkpoint itself, a slip) names that option, not the folder
    stored in the checkpoint; a stored folder that is gone or a file is named as the checkpoint's."""
    from cmav.tasks.audio_token import load_audio_token
    from cmav.tasks.classifier import _load_checkpoint

    out, seed = quick_run["out"], quick_run["cfg"]["seeds"][0]
    ckpt = out / "runs" / "audio_token" / f"seed{seed}" / "token.ckpt"
    with pytest.raises(NotADirectoryError, match=r"--pipeline \(pipeline=\.\.\.\) \S*token\.ckpt is not a folder "
                                                 r"\(it is a file\)"):  # fmt: skip
        load_audio_token(ckpt, pipeline=ckpt)
    with pytest.raises(FileNotFoundError, match=r"--pipeline \(pipeline=\.\.\.\): the diffusion pipeline "
                                                r"folder .*nowhere does not exist"):
        load_audio_token(ckpt, pipeline=tmp_path / "nowhere")
    moved = _load_checkpoint(ckpt)
    moved["cmav_audio_token"]["pipeline"] = str(ckpt)
    torch.save(moved, tmp_path / "moved.ckpt")
    with pytest.raises(NotADirectoryError, match=r"moved\.ckpt: its diffusion pipeline folder \S*token\.ckpt is "
                                                 r"not a folder \(it is a file\)"):  # fmt: skip
        load_audio_token(tmp_path / "moved.ckpt")


def _quick_pipeline(quick_run, folder: Path, caption: str = "a photo of a {} player", **model) -> Path:
    """A fresh pipeline folder like the quick run's (its classes' captions), ``model`` options changed."""
    from cmav.tasks.classifier import _load_checkpoint

    out, seed = quick_run["out"], quick_run["cfg"]["seeds"][0]
    ckpt = _load_checkpoint(out / "runs" / "audio_token" / f"seed{seed}" / "token.ckpt")
    names = ckpt["hyper_parameters"]["class_names"]
    options = {**quick_run["cfg"]["stages"]["diffusion_base"]["model"]["model"], **model}
    options["block_out_channels"] = tuple(options["block_out_channels"])
    torch.manual_seed(0)
    pipe = build_pixel_diffusion([caption.format(label_words(c)) for c in names], PixelDiffusionConfig(**options))
    return pipe.save(folder)


def test_token_checkpoint_refuses_a_pipeline_it_cannot_use(quick_run, tmp_path):
    """Another text width (the token's) or a vocabulary without the template's words: a ValueError that
    names the checkpoint, the folder and what is wrong, not torch's size mismatch or a silent <unk>."""
    from cmav.tasks.audio_token import load_audio_token

    out, seed = quick_run["out"], quick_run["cfg"]["seeds"][0]
    ckpt = out / "runs" / "audio_token" / f"seed{seed}" / "token.ckpt"
    width = quick_run["cfg"]["stages"]["diffusion_base"]["model"]["model"]["text_width"]
    narrow = _quick_pipeline(quick_run, tmp_path / "narrow", text_width=width // 2, text_heads=1)
    with pytest.raises(ValueError, match=rf"token\.ckpt: its audio token is {width} wide, but the text encoder of "
                                         rf"the pipeline folder .*narrow is {width // 2} wide"):  # fmt: skip
        load_audio_token(ckpt, pipeline=narrow)
    drawings = _quick_pipeline(quick_run, tmp_path / "drawings", caption="a drawing of a {} player")
    with pytest.raises(ValueError, match=r"token\.ckpt: .*drawings: its tokenizer does not know the words \['photo'\]"):
        load_audio_token(ckpt, pipeline=drawings)


def test_resuming_token_training_checks_the_pipeline_as_loading_does(quick_run, tmp_path):
    """`cmav fit --ckpt_path` with another pipeline folder: the same warning as load_audio_token
    (fingerprints differ) and the same refusal of another text width, before any weight is loaded."""
    import lightning as L

    from cmav.ablation.grid import datamodule
    from cmav.tasks.audio_token import AudioTokenTask

    out, cfg = quick_run["out"], quick_run["cfg"]
    seed = cfg["seeds"][0]
    ckpt = out / "runs" / "audio_token" / f"seed{seed}" / "token.ckpt"
    dm = datamodule(cfg, out)
    other = tmp_path / "other"
    shutil.copytree(out / "diffusion_base" / "pipeline", other)
    (other / "scheduler" / "scheduler_config.json").write_text(json.dumps(
        {**json.loads((other / "scheduler" / "scheduler_config.json").read_text()), "beta_end": 0.03}))  # fmt: skip
    width = cfg["stages"]["diffusion_base"]["model"]["model"]["text_width"]
    narrow = _quick_pipeline(quick_run, tmp_path / "narrow", text_width=width // 2, text_heads=1)
    clf = out / "judges" / f"audio_classifier_seed{seed}.ckpt"
    model = cfg["stages"]["audio_token"]["model"]
    steps = int(torch.load(ckpt, map_location="cpu", weights_only=False)["global_step"])

    def resume(pipeline: Path) -> None:
        task = AudioTokenTask(pipeline=str(pipeline), audio_encoder_ckpt=str(clf), image_size=cfg["data"]["image_size"],
                              **model)  # fmt: skip
        trainer = L.Trainer(accelerator="cpu", max_steps=steps, logger=False, enable_checkpointing=False,
                            enable_progress_bar=False, enable_model_summary=False, limit_val_batches=0)  # fmt: skip
        trainer.fit(task, datamodule=dm, ckpt_path=str(ckpt))  # already at max_steps: restores, trains nothing

    with pytest.warns(UserWarning, match=r"other is not the pipeline folder .*token\.ckpt was trained with"):
        resume(other)
    refusal = rf"token\.ckpt: its audio token is {width} wide, .*narrow is {width // 2} wide"
    with pytest.raises(ValueError, match=refusal):
        resume(narrow)


def test_default_template_is_the_default_pipelines_caption_form():
    """AudioTokenTask's default pipeline is diffusion_base's, trained on 'a photo of a X player': the
    default template, and every YAML's, is that caption with the placeholder for X."""
    import inspect

    import yaml

    from cmav.tasks.audio_token import AudioTokenTask
    from cmav.tasks.diffusion import DiffusionBaseTask

    task_defaults = inspect.signature(AudioTokenTask).parameters
    caption = inspect.signature(DiffusionBaseTask).parameters["caption"].default
    prompt = task_defaults["prompt"].default
    assert prompt.template == caption.format(prompt.placeholder) == PromptConfig().template
    base = yaml.safe_load((REPO / "experiments" / "diffusion_base.yaml").read_text())
    assert task_defaults["pipeline"].default == f"{base['trainer']['default_root_dir']}/pipeline"
    token = yaml.safe_load((REPO / "experiments" / "audio_token.yaml").read_text())["model"]["init_args"]
    grid = yaml.safe_load(CONFIG.read_text())["stages"]["audio_token"]["model"]
    for p in (token["prompt"], grid["prompt"]):
        assert p["template"] == base["model"]["init_args"]["caption"].format(p["placeholder"]) == prompt.template


def test_token_grid_reuses_given_checkpoints(quick_run, tmp_path):
    """Every stage that may be given (sound classifier, image judge, retrieval model, S2I-C) and the
    pipeline folder taken from the first run: only the audio token trains, and S2I-C is scored from
    the given checkpoint."""
    import copy

    from cmav.ablation import run_ablation

    first, cfg = quick_run["out"], copy.deepcopy(quick_run["cfg"])
    seed = cfg["seeds"][0]
    given = {"audio_classifier": first / "judges" / f"audio_classifier_seed{seed}.ckpt",
             "image_judge": first / "judges" / "image_judge.ckpt", "retrieval": first / "judges" / "retrieval.ckpt",
             "s2i": first / "runs" / "s2i_c" / f"seed{seed}" / "s2i.ckpt"}  # fmt: skip
    for stage, path in given.items():
        cfg["stages"][stage] = {"ckpt": str(path)}  # no steps: nothing to train
    cfg["diffusion"] = {"pipeline": str(first / "diffusion_base" / "pipeline")}
    out = tmp_path / "again"
    result = run_ablation(cfg, out_dir=out)
    assert not (out / "judges").exists() and not (out / "runs" / "s2i_c").exists()
    assert not (out / "diffusion_base").exists() and (out / "runs" / "audio_token" / f"seed{seed}" / "token.ckpt").is_file()
    by_method = {r["variant"]: r for r in result["runs"]}
    before = {r["variant"]: r for r in quick_run["result"]["runs"]}
    assert by_method["S2I-C"]["checkpoint"] == str(given["s2i"])
    # the same checkpoint scored on the same items with the same negatives (AIC and FID are left out:
    # a 3-step judge's near-ties and a 13-item covariance move with the last bits of a conv kernel)
    now, then = by_method["S2I-C"]["metrics"], before["S2I-C"]["metrics"]
    assert (now["AIS"], now["IIS"], now["n_items"]) == (then["AIS"], then["IIS"], then["n_items"])
    # a given checkpoint that is not there is refused before anything runs, by its key and path
    cfg["stages"]["image_judge"] = {"ckpt": str(tmp_path / "no_judge.ckpt")}
    with pytest.raises(FileNotFoundError, match=r"stages\.image_judge\.ckpt .*no_judge\.ckpt does not exist"):
        run_ablation(cfg, out_dir=tmp_path / "third")
    # and a stage with neither steps nor a checkpoint is named
    cfg["stages"]["image_judge"] = {"model": {}}
    with pytest.raises(ValueError, match=r"\['image_judge'\] missing"):
        run_ablation(cfg, out_dir=tmp_path / "fourth")


def test_cpu_preset_repeats_the_cpu_diffusion_overlay():
    """The grid cannot include experiments/diffusion_cpu.yaml, so its cpu preset repeats the overlay's
    diffusion-model options: they must not drift apart (a pipeline trained with the overlay is what the
    preset is documented to take through diffusion.pipeline)."""
    import yaml

    from cmav.ablation import load_grid

    overlay = yaml.safe_load((REPO / "experiments" / "diffusion_cpu.yaml").read_text())["model"]["init_args"]
    preset = load_grid(CONFIG, "cpu")["stages"]["diffusion_base"]["model"]
    assert {k: preset[k] for k in ("model", "optimizer", "sample_every_n_epochs")} == {
        k: overlay[k] for k in ("model", "optimizer", "sample_every_n_epochs")}


def test_cpu_diffusion_overlay_checkpoints_every_epoch_and_resumes(tmp_path, monkeypatch):
    """Validation is off in the CPU overlay (and diffusion_base.yaml validates every 10th epoch), so
    Lightning's ModelCheckpoint would only save when fit ends: a killed run would leave nothing to
    resume (seen: 9 epochs, no checkpoint). The overlay saves at train-epoch ends; a run writes
    last.ckpt and the pipeline folder, and --ckpt_path last resumes it."""
    import sys

    import yaml

    from cmav.cli.main import main as cmav_main

    from fixtures import make_suburmp_tracks

    overlay = yaml.safe_load((REPO / "experiments" / "diffusion_cpu.yaml").read_text())
    (ckpt_cb,) = [c for c in overlay["trainer"]["callbacks"] if c["class_path"].endswith("ModelCheckpoint")]
    assert ckpt_cb["init_args"]["save_on_train_epoch_end"] is True
    data = make_suburmp_tracks(tmp_path / "data", tracks=(0, 1), chunks=2)
    monkeypatch.chdir(tmp_path)  # the overlay's runs/diffusion_cpu lands here
    monkeypatch.setattr(sys, "argv", ["cmav"])
    args = ["fit", "--config", str(REPO / "experiments" / "diffusion_base.yaml"),
            "--config", str(REPO / "experiments" / "diffusion_cpu.yaml"), f"--data.root={data}", "--data.batch_size=4",
            "--data.progress=false", "--data.image_size=32", "--trainer.max_steps=-1", "--trainer.max_epochs=2",
            "--trainer.limit_train_batches=2", "--trainer.enable_model_summary=false"]  # fmt: skip
    assert cmav_main(args) == 0
    run = tmp_path / "runs" / "diffusion_cpu"
    last = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert last["global_step"] == 4  # 2 epochs x 2 batches
    assert (run / "pipeline" / "unet" / "config.json").is_file()
    assert cmav_main([*args, "--trainer.max_epochs=3", "--ckpt_path=last"]) == 0
    again = torch.load(run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert again["global_step"] == 6 and again["epoch"] == last["epoch"] + 1  # one more epoch, resumed


def test_diffusion_base_refuses_lightnings_weight_averaging():
    import lightning as L
    from lightning.pytorch.callbacks import EMAWeightAveraging

    from cmav.tasks.diffusion import DiffusionBaseTask

    task = DiffusionBaseTask()
    task.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, callbacks=[EMAWeightAveraging()])
    with pytest.raises(ValueError, match="own EMA of the denoiser.*remove the EMAWeightAveraging"):
        task.setup("fit")


def test_audio_token_refuses_lightnings_weight_averaging(diffusion, tmp_path):
    """The embedder is the only trained part: a weight-averaging callback would copy the whole frozen
    diffusion model into the token checkpoint (current_model_state: 449,971 bytes against 61,773)."""
    import lightning as L
    from lightning.pytorch.callbacks import EMAWeightAveraging, StochasticWeightAveraging

    from cmav.tasks.audio_token import AudioTokenTask

    encoder = {"config": {"n_blocks": 3, "base_channels": 4, "max_channels": 16, "feature_dim": 8},
               "input_shape": [1, 32, 16], "n_classes": len(CLASSES)}  # fmt: skip
    folder = diffusion.save(tmp_path / "pipe")
    task = AudioTokenTask(pipeline=str(folder), audio_encoder_ckpt=None, audio_encoder=encoder, class_names=CLASSES,
                          image_size=16, embedder={"hidden_dim": 16})  # fmt: skip
    for callback in (EMAWeightAveraging(), StochasticWeightAveraging(swa_lrs=1e-3)):
        task.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False, callbacks=[callback])
        name = type(callback).__name__
        with pytest.raises(ValueError, match=rf"the embedder is the only trained part.*remove the {name} callback"):
            task.setup("fit")
    task.trainer = L.Trainer(accelerator="cpu", devices=1, logger=False)
    task.setup("fit")  # no callback: nothing refused


def test_diffusion_base_refuses_captions_it_would_truncate_or_confuse():
    """Captions longer than model.max_length used to be cut silently (possibly to the same tokens for
    every class); two classes whose captions tokenize alike could not be told apart either."""
    import dataclasses

    from cmav.tasks.diffusion import DiffusionBaseTask

    short = dataclasses.asdict(dataclasses.replace(TINY, max_length=6))
    longer = "a photo of a musician playing the {}"
    with pytest.raises(ValueError, match=r"caption 'a photo of a musician playing the violin' \(class 'violin'\) "
                                         r"takes 10 tokens \(start and end tokens included\) but model\.max_length "
                                         r"is 6"):  # fmt: skip
        DiffusionBaseTask(image_size=16, class_names=CLASSES, model=short, caption=longer)
    with pytest.raises(ValueError, match=r"classes 'double_bass' and 'double-bass' have the same caption tokens "
                                         r"\('a photo of a double bass player'\)"):  # fmt: skip
        DiffusionBaseTask(image_size=16, class_names=["double_bass", "double-bass", "flute"],
                          model=dataclasses.asdict(TINY))  # fmt: skip
    fits = DiffusionBaseTask(image_size=16, class_names=CLASSES, model=dataclasses.asdict(TINY))  # longest: 9 of 10
    assert len({tuple(r.tolist()) for r in fits.caption_ids[:-1]}) == len(CLASSES)


def test_token_generation_replaces_its_previous_images_and_refuses_an_image_file_for_the_folder(quick_run, tmp_path,
                                                                                                  capsys):  # fmt: skip
    """A second run with a smaller -n left the first run's later samples (and a stale grid) beside its
    own; `-o out.png` made a folder named out.png, or failed with "File exists" where a file was."""
    from PIL import Image

    from cmav.cli.main import main as cmav_main
    from cmav.evaluation.token import generate_from_audio_token

    from fixtures import write_wav

    out, seed = quick_run["out"], quick_run["cfg"]["seeds"][0]
    ckpt = out / "runs" / "audio_token" / f"seed{seed}" / "token.ckpt"
    wav = write_wav(tmp_path / "clip.wav", seconds=0.5, freq=440.0)
    gen = tmp_path / "gen"
    kw = dict(seed=0, steps=1, scheduler="ddpm", device="cpu")
    generate_from_audio_token(ckpt, wav, n=3, output_dir=gen, **kw)
    (gen / "notes.txt").write_text("not one of its outputs")
    paths, _ = generate_from_audio_token(ckpt, wav, n=1, output_dir=gen, **kw)
    assert sorted(p.name for p in gen.iterdir()) == ["grid.png", "notes.txt", "sample_00.png"]
    assert Image.open(gen / "grid.png").size == Image.open(paths[-1]).size
    for name in ("out.png", "out.JPG"):
        with pytest.raises(ValueError, match=rf"{name}: -o \(output_dir\) is a folder for an audio-token checkpoint"):
            generate_from_audio_token(ckpt, wav, output_dir=tmp_path / name, **kw)
        assert not (tmp_path / name).exists()
    (tmp_path / "afile").write_text("x")
    with pytest.raises(ValueError, match=r"afile: -o \(output_dir\) is a folder for an audio-token checkpoint.*is a file"):
        generate_from_audio_token(ckpt, wav, output_dir=tmp_path / "afile", **kw)
    assert cmav_main(["generate", "--ckpt", str(ckpt), "--audio", str(wav), "-n", "1", "--steps", "1",
                      "--scheduler", "ddpm", "-o", str(tmp_path / "cli.png")]) == 2  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cli.png: -o (output_dir) is a folder for an audio-token checkpoint" in err[0]
    assert not (tmp_path / "cli.png").exists()


def test_the_token_grid_scores_a_given_audio_token_checkpoint(quick_run, tmp_path, monkeypatch):
    """A token trained with `cmav fit --config experiments/audio_token.yaml` could not be scored:
    the grid refused stages.audio_token.ckpt. Given with every other stage and the pipeline folder it
    was trained with, nothing trains (not even the sound classifier, which only the audio token and
    S2I-C read) and the token is scored from its file; one the grid cannot use is refused first."""
    import copy

    from cmav.ablation import grid, run_ablation, token

    first, cfg = quick_run["out"], copy.deepcopy(quick_run["cfg"])
    seed = cfg["seeds"][0]
    tok = first / "runs" / "audio_token" / f"seed{seed}" / "token.ckpt"
    given = {"image_judge": first / "judges" / "image_judge.ckpt", "retrieval": first / "judges" / "retrieval.ckpt",
             "s2i": first / "runs" / "s2i_c" / f"seed{seed}" / "s2i.ckpt", "audio_token": tok}  # fmt: skip
    for stage, path in given.items():
        cfg["stages"][stage] = {"ckpt": str(path)}
    fitted = []

    def fit(*args, **kwargs):
        fitted.append(args[3])
        raise AssertionError(f"stage {args[3]} trained")

    monkeypatch.setattr(grid, "fit", fit)
    monkeypatch.setattr(token, "fit", fit)
    pipeline = first / "diffusion_base" / "pipeline"
    # the grid would train a diffusion model of its own, which the token was not trained with
    with pytest.raises(ValueError, match=rf"stages\.audio_token\.ckpt needs diffusion\.pipeline, the folder the token "
                                         rf"was trained with \({pipeline}\)"):  # fmt: skip
        run_ablation(cfg, out_dir=tmp_path / "no_pipeline")
    width = cfg["stages"]["diffusion_base"]["model"]["model"]["text_width"]
    cfg["diffusion"] = {"pipeline": str(_quick_pipeline(quick_run, tmp_path / "narrow", text_width=width // 2,
                                                        text_heads=1))}  # fmt: skip
    with pytest.raises(ValueError, match=rf"stages\.audio_token\.ckpt \S*token\.ckpt: its audio token is {width} wide"):
        run_ablation(cfg, out_dir=tmp_path / "narrow_run")
    cfg["diffusion"] = {"pipeline": str(pipeline)}
    mfcc = copy.deepcopy(cfg)
    for stage in ("audio_classifier", "retrieval", "s2i"):  # given, these read audio too: trained here instead
        mfcc["stages"][stage] = quick_run["cfg"]["stages"][stage]
    mfcc["data"]["features"] = {"kind": "mfcc"}
    with pytest.raises(ValueError, match=r"stages\.audio_token\.ckpt \S*token\.ckpt: trained on other data settings "
                                         r".*front end kind: lms -> mfcc"):  # fmt: skip
        run_ablation(mfcc, out_dir=tmp_path / "mfcc")
    assert fitted == []

    out = tmp_path / "given"
    result = run_ablation(cfg, out_dir=out)
    assert fitted == [] and not (out / "judges").exists() and not (out / "runs").exists()
    by_method = {r["variant"]: r for r in result["runs"]}
    before = {r["variant"]: r for r in quick_run["result"]["runs"]}
    assert by_method["audio token"]["checkpoint"] == by_method["text label"]["checkpoint"] == str(tok)
    for method in ("audio token", "text label"):  # the same weights, items, noise and negatives
        now, then = by_method[method]["metrics"], before[method]["metrics"]
        assert (now["AIS"], now["IIS"], now["n_items"]) == (then["AIS"], then["IIS"], then["n_items"])
