"""Audio-image similarity models: a global embedding model and a dense (DenseAV-style) model.

Both sit on cmav's own :class:`~cmav.models.AudioEncoder` / :class:`~cmav.models.ImageEncoder`
and share one interface, so retrieval, grounding, the embedding index and the diffusion-token
branch can use either:

* ``encode_audio(audio)`` / ``encode_image(image)``: L2-normalised embeddings. Global model:
  ``(N, D)``. Dense model: token sets, audio ``(N, K, T, D)`` (K heads, T audio tokens) and image
  ``(N, K, L, D)`` (L = h*w locations of the image feature map).
* ``scores(audio_emb, image_emb)``: the ``(Na, Ni)`` similarity of every audio with every image.
* ``pair_scores(audio_emb, image_emb)``: the ``(N,)`` similarity of paired rows.
* ``location_map(audio, image)``: ``(N, h, w)`` per-location similarity of paired (audio, image);
  ``heatmap(audio, image)``: the same upsampled to the frame, ``(N, S, S)``.

Global model ("Objects that Sound" AVE-Net, Wav2CLIP): encoder embedding -> MLP projection head
-> shared L2-normalised space; similarity = inner product. Its similarity map applies the image
encoder's feature layer and the projection head at every location of the last feature map (a
class-activation-style map), which is the "global model's map" the dense model is compared with.

Dense model (DenseAV): the image feature map and the audio time sequence (frequency pooled or
kept) are projected per token into K heads; the similarity volume holds the inner product of
every audio token with every image location, per head; a pair's score is the max over heads and
image locations, averaged over audio tokens. With two heads an optional regulariser
(mean ``|s_head1 * s_head2|``) pushes the heads to respond to different things.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cmav.models.encoders import AudioEncoder, ConvEncoder, ImageEncoder, StatsPoolEncoder, make_activation

AudioFreq = Literal["pool", "keep"]

# elements of one chunk of a similarity volume (float32: 256 MiB); bounds memory of big score matrices
VOLUME_CHUNK_ELEMENTS = 64 * 1024 * 1024


class ProjectionHead(nn.Module):
    """MLP ``in_dim -> hidden_dim -> ... -> out_dim`` over the LAST axis (so it also projects tokens).

    ``n_layers`` Linear layers with an activation between them (none after the last: the output
    is L2-normalised by the caller). ``n_layers=1`` is a linear projection.
    """

    def __init__(self, in_dim: int, out_dim: int = 128, hidden_dim: int = 256, n_layers: int = 2,
                 activation: str = "relu", dropout: float = 0.0) -> None:  # fmt: skip
        super().__init__()
        if n_layers < 1:
            raise ValueError(f"n_layers must be >= 1, got {n_layers}")
        layers: list[nn.Module] = []
        d = in_dim
        for _ in range(n_layers - 1):
            layers += [nn.Linear(d, hidden_dim), make_activation(activation)]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            d = hidden_dim
        layers.append(nn.Linear(d, out_dim))
        self.net = nn.Sequential(*layers)
        self.in_dim, self.out_dim = in_dim, out_dim

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


# ----------------------------------------------------------------------------- pure functions


def similarity_volume(audio_tokens: Tensor, image_tokens: Tensor) -> Tensor:
    """Inner products of every audio token with every image location, per head.

    ``audio_tokens`` ``(Na, K, T, D)``, ``image_tokens`` ``(Ni, K, L, D)`` -> ``(Na, Ni, K, T, L)``.
    """
    if audio_tokens.dim() != 4 or image_tokens.dim() != 4:
        raise ValueError(f"expected (N, K, T, D) and (N, K, L, D), got {tuple(audio_tokens.shape)}, "
                         f"{tuple(image_tokens.shape)}")  # fmt: skip
    return torch.einsum("akte,bkle->abktl", audio_tokens, image_tokens)


def paired_volume(audio_tokens: Tensor, image_tokens: Tensor) -> Tensor:
    """The similarity volume of paired rows only: ``(N, K, T, D)``, ``(N, K, L, D)`` -> ``(N, K, T, L)``."""
    return torch.einsum("nkte,nkle->nktl", audio_tokens, image_tokens)


def aggregate_volume(volume: Tensor) -> Tensor:
    """DenseAV's aggregation: max over heads (dim -3) and image locations (dim -1), mean over audio
    tokens (dim -2). ``(..., K, T, L)`` -> ``(...)``."""
    return volume.amax(dim=(-3, -1)).mean(dim=-1)


def volume_to_location_map(volume: Tensor) -> Tensor:
    """Per-location similarity: max over heads, mean over audio tokens. ``(..., K, T, L)`` -> ``(..., L)``."""
    return volume.amax(dim=-3).mean(dim=-2)


def disentanglement_loss(volume: Tensor) -> Tensor:
    """DenseAV's head-disentanglement regulariser: mean ``|s_head1 * s_head2|`` over the volume
    ``(..., K=2, T, L)``; zero for one head."""
    k = volume.shape[-3]
    if k == 1:
        return volume.new_zeros(())
    if k != 2:
        raise ValueError(f"the disentanglement regulariser is defined for 1 or 2 heads, got {k}")
    return (volume.select(-3, 0) * volume.select(-3, 1)).abs().mean()


def dense_scores(audio_tokens: Tensor, image_tokens: Tensor, max_elements: int = VOLUME_CHUNK_ELEMENTS) -> Tensor:
    """``(Na, Ni)`` aggregated dense scores, computed in chunks of audio rows so the full volume
    ``(Na, Ni, K, T, L)`` never has to fit in memory."""
    na, k, t, _ = audio_tokens.shape
    ni, _, n_loc, _ = image_tokens.shape
    rows = max(1, max_elements // max(1, ni * k * t * n_loc))
    out = [aggregate_volume(similarity_volume(audio_tokens[i : i + rows], image_tokens))
           for i in range(0, na, rows)]  # fmt: skip
    return torch.cat(out) if out else audio_tokens.new_zeros((0, ni))


def global_scores(audio_emb: Tensor, image_emb: Tensor) -> Tensor:
    """``(Na, Ni)`` inner products of L2-normalised embeddings (cosine similarity)."""
    return audio_emb @ image_emb.T


def upsample_map(location_map: Tensor, size: tuple[int, int], cell: tuple[int, int] | None = None) -> Tensor:
    """``(N, h, w)`` -> ``(N, *size)``, bilinear (the map's cells are areas of the frame).

    ``cell``: the ``(rows, cols)`` of frame pixels one map cell pools (:func:`pooling_stride`). Max
    pooling floors, so a frame that is not a multiple of it keeps only its first ``h * rows`` rows and
    ``w * cols`` columns: the map is laid over those and its edge cells extended over the rest.
    Without ``cell`` the map spans the whole frame.
    """
    m = location_map.unsqueeze(1).float()
    if cell is None:
        return F.interpolate(m, size=size, mode="bilinear", align_corners=False).squeeze(1)
    h, w = location_map.shape[-2:]
    covered = (min(h * cell[0], size[0]), min(w * cell[1], size[1]))
    up = F.interpolate(m, size=covered, mode="bilinear", align_corners=False)
    # stretching the map over the dropped rows/columns too would move every cell off the pixels it pooled
    return F.pad(up, (0, size[1] - covered[1], 0, size[0] - covered[0]), mode="replicate").squeeze(1)


def symmetric_info_nce(logits_a2i: Tensor, logits_i2a: Tensor, offset: int = 0) -> Tensor:
    """Symmetric InfoNCE (CLIP) with in-batch negatives.

    ``logits_a2i`` ``(B, M)``: this process's B audio queries against all M images (M = B, or
    the images gathered from every process); ``logits_i2a`` ``(B, M)``: this process's images
    against all audio. Row ``i``'s positive is column ``offset + i`` (``offset`` = rank * B under
    DDP). Both logits are already multiplied by the inverse temperature.
    """
    b = logits_a2i.shape[0]
    target = torch.arange(b, device=logits_a2i.device) + offset
    return 0.5 * (F.cross_entropy(logits_a2i, target) + F.cross_entropy(logits_i2a, target))


# ----------------------------------------------------------------------------- models


def run_blocks(encoder: ConvEncoder, x: Tensor, block: int) -> Tensor:
    """The map after conv block ``block`` (negative = from the end) without computing the later
    blocks or the pooled feature."""
    n = len(encoder.blocks)
    idx = block % n
    if x.dim() != 4 or x.shape[1] != encoder.input_shape[0]:
        raise ValueError(f"expected input (N, {encoder.input_shape[0]}, H, W), got {tuple(x.shape)}")
    x = encoder.stem(encoder.input_norm(x))  # as ConvEncoder does: the waveform front end's strided stem
    for b in encoder.blocks[: idx + 1]:
        x = b(x)
    return x


def pooling_stride(encoder: ConvEncoder, block: int = -1) -> tuple[int, int]:
    """``(rows, cols)`` of input one cell of the map after ``block`` pools: the product of the max-pool
    strides of the blocks up to it (the kernels are fixed at construction, whatever the input size)."""
    rows = cols = 1
    for b in encoder.blocks[: block % len(encoder.blocks) + 1]:
        for m in b.modules():
            if isinstance(m, nn.MaxPool2d):
                sh, sw = _pair(m.stride)
                rows, cols = rows * sh, cols * sw
    return rows, cols


def _pair(x: int | tuple[int, ...]) -> tuple[int, int]:
    return (x, x) if isinstance(x, int) else (int(x[0]), int(x[1]))


def _freeze_unused(encoder: ConvEncoder, block: int | None) -> None:
    """No gradients for parts a model never uses, so DDP needs no unused-parameter search and
    optimisers skip them. ``block=None``: the pooled feature is used, only the class head is not."""
    encoder.classifier.requires_grad_(False)
    if block is not None:
        encoder.fc_feature.requires_grad_(False)
        for b in encoder.blocks[block % len(encoder.blocks) + 1 :]:
            b.requires_grad_(False)


class GlobalAVModel(nn.Module):
    """Audio and image encoders -> MLP projection heads -> shared L2-normalised ``embed_dim`` space.

    Args:
        audio_encoder: LMS encoder (e.g. the sound classifier's); its pooled feature is projected.
        image_encoder: frame encoder; its pooled feature is projected.
        embed_dim: size of the shared space.
        hidden_dim: hidden width of the projection heads.
        head_layers: Linear layers per head.
    """

    kind = "global"

    def __init__(self, audio_encoder: AudioEncoder, image_encoder: ImageEncoder, embed_dim: int = 128,
                 hidden_dim: int = 256, head_layers: int = 2) -> None:  # fmt: skip
        super().__init__()
        if isinstance(image_encoder, StatsPoolEncoder):
            # its feature layer pools statistics over a whole map's time axis: it cannot score single
            # locations, which the global model's location map and heatmap need
            raise ValueError("GlobalAVModel needs a convolutional image encoder, got a StatsPoolEncoder "
                             "(image_encoder.arch='stats'): its location map applies the feature layer at every "
                             "location; use arch 'conv', or the dense model")  # fmt: skip
        self.audio_encoder = audio_encoder
        self.image_encoder = image_encoder
        self.audio_head = ProjectionHead(audio_encoder.feature_dim, embed_dim, hidden_dim, head_layers)
        self.image_head = ProjectionHead(image_encoder.feature_dim, embed_dim, hidden_dim, head_layers)
        self.embed_dim = embed_dim
        _freeze_unused(audio_encoder, None)
        _freeze_unused(image_encoder, None)

    @property
    def map_shape(self) -> tuple[int, int]:
        """``(h, w)`` of :meth:`location_map`."""
        _, h, w = self.image_encoder.block_shapes[-1]
        return h, w

    def encode_audio(self, audio: Tensor) -> Tensor:
        """``(N, D)`` L2-normalised audio embeddings of LMS ``(N, 1, n_mels, frames)``."""
        return F.normalize(self.audio_head(self.audio_encoder.embed(audio)), dim=-1)

    def encode_image(self, image: Tensor) -> Tensor:
        """``(N, D)`` L2-normalised image embeddings of frames ``(N, 3, S, S)`` in [-1, 1]."""
        return F.normalize(self.image_head(self.image_encoder.embed(image)), dim=-1)

    def encode_locations(self, image: Tensor) -> Tensor:
        """``(N, h*w, D)``: the feature layer and the head applied at every feature-map location."""
        return self._locations(image)[0]

    def _locations(self, image: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """:meth:`encode_locations` and the ``(h, w)`` of the map they come from, which is
        :attr:`map_shape` only for frames of the size the encoder was built for."""
        fmap = self.image_encoder.feature_map(image)  # (N, C, h, w)
        n, c, h, w = fmap.shape
        tokens = fmap.flatten(2).transpose(1, 2).reshape(n * h * w, c)
        feat = self.image_encoder.fc_feature(tokens)  # Flatten is a no-op on (N*L, C)
        return F.normalize(self.image_head(feat), dim=-1).view(n, h * w, -1), (h, w)

    @staticmethod
    def scores(audio_emb: Tensor, image_emb: Tensor) -> Tensor:
        return global_scores(audio_emb, image_emb)

    @staticmethod
    def pair_scores(audio_emb: Tensor, image_emb: Tensor) -> Tensor:
        return (audio_emb * image_emb).sum(-1)

    def location_map(self, audio: Tensor, image: Tensor) -> Tensor:
        """``(N, h, w)`` cosine similarity of each audio embedding with its image's locations."""
        a = self.encode_audio(audio)
        loc, (h, w) = self._locations(image)
        return torch.einsum("nd,nld->nl", a, loc).view(-1, h, w)

    def heatmap(self, audio: Tensor, image: Tensor) -> Tensor:
        """:meth:`location_map` upsampled to the frame, each cell over the pixels it pooled: ``(N, S, S)``."""
        cell = pooling_stride(self.image_encoder)
        return upsample_map(self.location_map(audio, image), tuple(image.shape[-2:]), cell)


class DenseAVModel(nn.Module):
    """DenseAV-style dense audio-image similarity on cmav's encoders.

    Args:
        audio_encoder: LMS encoder; its map after ``audio_block`` is ``(C, F, T)`` (frequency x time).
        image_encoder: frame encoder; its map after ``image_block`` is ``(C, h, w)``.
        embed_dim: size of each head's token space.
        hidden_dim: hidden width of the per-token projection heads.
        head_layers: Linear layers per projection head.
        n_heads: K, 1 or 2 (two heads allow the disentanglement regulariser).
        audio_freq: ``'pool'``: average the frequency axis, one token per time step (T tokens);
            ``'keep'``: one token per (frequency, time) cell (F*T tokens).
        audio_block, image_block: which conv block's map is tokenised (negative = from the end).
    """

    kind = "dense"

    def __init__(self, audio_encoder: AudioEncoder, image_encoder: ImageEncoder, embed_dim: int = 128,
                 hidden_dim: int = 256, head_layers: int = 2, n_heads: int = 1, audio_freq: AudioFreq = "pool",
                 audio_block: int = -1, image_block: int = -1) -> None:  # fmt: skip
        super().__init__()
        if n_heads not in (1, 2):
            raise ValueError(f"n_heads must be 1 or 2, got {n_heads}")
        if audio_freq not in ("pool", "keep"):
            raise ValueError(f"audio_freq must be 'pool' or 'keep', got {audio_freq!r}")
        blocks = (("audio_block", audio_encoder, audio_block), ("image_block", image_encoder, image_block))
        for name, enc, blk in blocks:
            if not -len(enc.blocks) <= blk < len(enc.blocks):
                raise ValueError(f"{name}={blk} out of range for an encoder with {len(enc.blocks)} blocks")
        self.audio_encoder = audio_encoder
        self.image_encoder = image_encoder
        self.n_heads, self.embed_dim, self.audio_freq = n_heads, embed_dim, audio_freq
        self.audio_block, self.image_block = audio_block, image_block
        a_c, a_f, a_t = audio_encoder.block_shapes[audio_block]
        i_c, i_h, i_w = image_encoder.block_shapes[image_block]
        self.n_audio_tokens = a_t if audio_freq == "pool" else a_f * a_t
        self._map_shape = (i_h, i_w)
        self.audio_head = ProjectionHead(a_c, n_heads * embed_dim, hidden_dim, head_layers)
        self.image_head = ProjectionHead(i_c, n_heads * embed_dim, hidden_dim, head_layers)
        _freeze_unused(audio_encoder, audio_block)
        _freeze_unused(image_encoder, image_block)

    @property
    def map_shape(self) -> tuple[int, int]:
        """``(h, w)`` of the image token grid."""
        return self._map_shape

    def _heads(self, tokens: Tensor, head: ProjectionHead) -> Tensor:
        """``(N, L, C)`` -> ``(N, K, L, D)``, L2-normalised per token and head."""
        n, length, _ = tokens.shape
        x = head(tokens).view(n, length, self.n_heads, self.embed_dim).transpose(1, 2)
        return F.normalize(x, dim=-1)

    def encode_audio(self, audio: Tensor) -> Tensor:
        """``(N, K, T, D)`` audio tokens of LMS ``(N, 1, n_mels, frames)``."""
        m = run_blocks(self.audio_encoder, audio, self.audio_block)  # (N, C, F, T)
        m = m.mean(dim=2) if self.audio_freq == "pool" else m.flatten(2)  # (N, C, T or F*T)
        return self._heads(m.transpose(1, 2), self.audio_head)

    def encode_image(self, image: Tensor) -> Tensor:
        """``(N, K, h*w, D)`` image tokens of frames ``(N, 3, S, S)`` in [-1, 1]."""
        return self._image_tokens(image)[0]

    def _image_tokens(self, image: Tensor) -> tuple[Tensor, tuple[int, int]]:
        """:meth:`encode_image` and its token grid's ``(h, w)``, which is :attr:`map_shape` only for
        frames of the size the encoder was built for."""
        m = run_blocks(self.image_encoder, image, self.image_block)  # (N, C, h, w)
        return self._heads(m.flatten(2).transpose(1, 2), self.image_head), tuple(m.shape[-2:])

    @staticmethod
    def scores(audio_emb: Tensor, image_emb: Tensor) -> Tensor:
        return dense_scores(audio_emb, image_emb)

    @staticmethod
    def pair_scores(audio_emb: Tensor, image_emb: Tensor) -> Tensor:
        return aggregate_volume(paired_volume(audio_emb, image_emb))

    def location_map(self, audio: Tensor, image: Tensor) -> Tensor:
        """``(N, h, w)``: per-location similarity (max over heads, mean over audio tokens)."""
        tokens, (h, w) = self._image_tokens(image)
        return volume_to_location_map(paired_volume(self.encode_audio(audio), tokens)).view(-1, h, w)

    def heatmap(self, audio: Tensor, image: Tensor) -> Tensor:
        """:meth:`location_map` upsampled to the frame, each cell over the pixels it pooled: ``(N, S, S)``."""
        cell = pooling_stride(self.image_encoder, self.image_block)
        return upsample_map(self.location_map(audio, image), tuple(image.shape[-2:]), cell)


def scores_for(kind: str, audio_emb: Tensor, image_emb: Tensor) -> Tensor:
    """``(Na, Ni)`` scores of stored embeddings of a ``'global'`` or ``'dense'`` model (no model needed)."""
    if kind == "global":
        return global_scores(audio_emb, image_emb)
    if kind == "dense":
        return dense_scores(audio_emb, image_emb)
    raise ValueError(f"unknown model kind {kind!r}; expected 'global' or 'dense'")


AVModel = GlobalAVModel | DenseAVModel

__all__ = [
    "AVModel",
    "DenseAVModel",
    "GlobalAVModel",
    "ProjectionHead",
    "aggregate_volume",
    "dense_scores",
    "disentanglement_loss",
    "global_scores",
    "paired_volume",
    "pooling_stride",
    "run_blocks",
    "scores_for",
    "similarity_volume",
    "symmetric_info_nce",
    "upsample_map",
    "volume_to_location_map",
]
