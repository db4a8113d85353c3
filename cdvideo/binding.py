"""Token-bound concepts: a concept's key/value change acts only at the text positions of its own token.

Merged into the weights (the ClassDiffusion paper's way, `inject.ConceptInjector._merge`), a concept's
key/value change acts on every word of the prompt (the background, other objects, the motion words)
and on the unconditional branch too, and so takes the scene over (docs/personalization.md measures
it). Bound, the change is computed beside the base projection and added only where the concept's
token stands (TARA's token-aware masking; Perfusion's key-locking as a variant):

    key   = W_k h + strength * m * (dW_k h)        m: 1 at the concept's positions, else 0
    value = W_v h + strength * m * (dW_v h)

so every other position, and a prompt without the token (the negative prompt), sees the base model
exactly. The processors go on the spatial `attn2` modules only; motion modules are never touched.

Bindings (`cdvideo.schedule.BINDINGS`):
    merged       the change merged into the weights: every position (the paper's behaviour)
    token        keys and values, at the token's positions
    token+class  keys and values, at the token's positions and the class word right after it
    values       values only, at the token's positions (keys stay the base model's)
    locked       values at the token's positions, and there the key is the class word's base key
                 (Perfusion's key-locking, Tewel et al. 2023): the concept is attended where its
                 class would be
    locked+class as locked, and the value change also at the class word (which is attended where
                 the object is, so the identity lands there too)
    region       keys and values at the token's positions, and the result only on the pixels where the
                 base model attends the class word (`region_weights`: 1 at each frame's peak, falling
                 with the attention elsewhere): a second object or the background drawn elsewhere keeps
                 the base model's output, and two concepts each stay on their own object

Which positions hold which token is read from the text encoder's own calls: a forward hook records
each call's token ids beside its output, and a processor finds each row of the encoder states it is
handed among the recorded outputs (the pipeline only copies them: concatenates the unconditional
and conditional halves and repeats them over frames). A blended row (FreeNoise prompt travel) takes
the positions of the nearest recorded one.
"""

from __future__ import annotations

import collections
import re
from dataclasses import dataclass

import torch
import torch.nn.functional as F

_SPATIAL_ATTN2 = re.compile(r"^(down_blocks\.\d+|up_blocks\.\d+|mid_block)\.attentions\.\d+\.transformer_blocks\.\d+\.attn2$")


class TokenPositions:
    """Where each bound concept's tokens stand in the prompts the text encoder has encoded.

    `concepts` lists, per bound concept, its token ids (all vectors of a multi-vector token) and its
    class word's ids (the positions right after the token, when they hold the class word).
    """

    # Recorded encoder calls kept: a render makes two (prompt, negative) or one per travel prompt.
    KEEP = 32

    def __init__(self):
        self.concepts: list[tuple[list[int], list[int]]] = []
        self._records: collections.deque = collections.deque(maxlen=self.KEEP)
        self._cache: tuple | None = None

    def add_concept(self, token_ids: list[int], class_ids: list[int]) -> int:
        self.concepts.append((list(token_ids), list(class_ids)))
        self._records.clear()
        self._cache = None
        return len(self.concepts) - 1

    def masks_for_ids(self, ids: torch.Tensor) -> torch.Tensor:
        """(n_concepts, 2, b, n) booleans for token ids (b, n): [:, 0] the token's positions, [:, 1] the class
        word's positions that directly follow the token."""
        out = torch.zeros(len(self.concepts), 2, *ids.shape, dtype=torch.bool, device=ids.device)
        for c, (token_ids, class_ids) in enumerate(self.concepts):
            is_token = torch.isin(ids, torch.tensor(token_ids, device=ids.device))
            out[c, 0] = is_token
            if not class_ids:
                continue
            # The class word follows the token's last vector: a run of len(class_ids) ids starting there.
            last = is_token & ~torch.cat([is_token[:, 1:], torch.zeros_like(is_token[:, :1])], dim=1)
            for row, pos in last.nonzero().tolist():
                span = ids[row, pos + 1 : pos + 1 + len(class_ids)].tolist()
                if span == class_ids:
                    out[c, 1, row, pos + 1 : pos + 1 + len(class_ids)] = True
        return out

    def record(self, ids: torch.Tensor, states: torch.Tensor) -> None:
        """Remember one text-encoder call: token ids (b, n) and its output (b, n, d)."""
        self._records.append((states.detach(), self.masks_for_ids(ids)))
        self._cache = None

    def clear(self) -> None:
        self._records.clear()
        self._cache = None

    def masks_for_states(self, states: torch.Tensor) -> torch.Tensor:
        """(n_concepts, 2, b', n) booleans for encoder states (b', n, d) the UNet was handed."""
        key = (states.data_ptr(), tuple(states.shape), states._version)
        if self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        if not self._records:
            masks = torch.zeros(len(self.concepts), 2, *states.shape[:2], dtype=torch.bool, device=states.device)
        else:
            recorded = torch.cat([r for r, _ in self._records]).to(states.device, states.dtype)  # (k, n, d)
            recorded_masks = torch.cat([m for _, m in self._records], dim=2).to(states.device)  # (c, 2, k, n)
            flat = states.detach().flatten(1).float()  # (b', n*d)
            # Rows are copies of recorded rows: an exact match has distance 0; a blend takes the nearest.
            nearest = torch.cdist(flat, recorded.flatten(1).float(),
                                  compute_mode="donot_use_mm_for_euclid_dist").argmin(dim=1)  # (b',)
            masks = recorded_masks[:, :, nearest]
        self._cache = (key, masks)
        return masks

    def hook(self, text_encoder: torch.nn.Module):
        """Record every call of `text_encoder`; returns the hook handle (`.remove()` it)."""

        def record(module, args, kwargs, output):
            ids = args[0] if args else kwargs.get("input_ids")
            states = output[0] if isinstance(output, (tuple, list)) else output.last_hidden_state
            if ids is not None:
                self.record(ids, states)

        return text_encoder.register_forward_hook(record, with_kwargs=True)


@dataclass
class BoundChange:
    """One concept's change on one attn2 module. `delta_k` / `delta_v` are (out, in) or None; `owner`
    carries the live strength (`owner.strength * owner.factor`); `index` is its place in TokenPositions."""

    owner: object
    index: int
    binding: str
    delta_k: torch.Tensor | None
    delta_v: torch.Tensor | None


class BoundAttnProcessor:
    """SDPA cross-attention (as diffusers' AttnProcessor2_0) with token-bound key/value changes added."""

    def __init__(self, positions: TokenPositions, changes: list[BoundChange]):
        self.positions = positions
        self.changes = changes

    def base_projections(self, attn, states: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return attn.to_k(states), attn.to_v(states)

    def deltas(self, attn, change: BoundChange) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        return change.delta_k, change.delta_v

    # Under --compile (cdvideo.regional_compile) the projections run eager: their token checks depend on the data
    # and their strengths change with the schedule, so compiled they would compile again for every strength.
    @torch.compiler.disable
    def project(self, attn, states: torch.Tensor, changes=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Keys and values with `changes` (default: all of this module's) added at their positions."""
        key, value = self.base_projections(attn, states)  # (b, n, inner)
        masks = self.positions.masks_for_states(states)  # (c, 2, b, n)
        for change in self.changes if changes is None else changes:
            key, value = self.add_change(attn, states, masks, change, key, value)
        return key, value

    def add_change(self, attn, states, masks, change: BoundChange, key, value) -> tuple[torch.Tensor, torch.Tensor]:
        strength = change.owner.strength * change.owner.factor
        if strength == 0.0:
            return key, value
        token, class_word = masks[change.index, 0], masks[change.index, 1]
        if not token.any():
            return key, value
        at = (token | class_word) if change.binding in ("token+class", "locked+class") else token
        at = at.unsqueeze(-1).to(key.dtype)  # (b, n, 1)
        delta_k, delta_v = self.deltas(attn, change)
        if change.binding.startswith("locked"):
            # Key-locking: at the token, the key of the class word that follows it (base weights).
            follows = token & torch.roll(class_word, shifts=-1, dims=1)
            follows = follows.unsqueeze(-1).to(key.dtype)
            key = key * (1 - follows) + follows * torch.roll(key, shifts=-1, dims=1)
        elif delta_k is not None and change.binding != "values":  # (locked: no key change)
            key = key + strength * at * F.linear(states, delta_k.to(states.dtype))
        if delta_v is not None:
            value = value + strength * at * F.linear(states, delta_v.to(states.dtype))
        return key, value

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)
        batch_size = hidden_states.shape[0] if encoder_hidden_states is None else encoder_hidden_states.shape[0]
        if attention_mask is not None:
            sequence_length = (hidden_states if encoder_hidden_states is None else encoder_hidden_states).shape[1]
            attention_mask = attn.prepare_attention_mask(attention_mask, sequence_length, batch_size)
            attention_mask = attention_mask.view(batch_size, attn.heads, -1, attention_mask.shape[-1])
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        states = encoder_hidden_states
        head_dim = attn.to_q.out_features // attn.heads
        query = query.view(batch_size, -1, attn.heads, head_dim).transpose(1, 2)  # (b, heads, n, hd)
        if attn.norm_q is not None:
            query = attn.norm_q(query)

        def heads(key, value):
            key = key.view(len(key), -1, attn.heads, head_dim).transpose(1, 2)
            value = value.view(len(value), -1, attn.heads, head_dim).transpose(1, 2)
            return (key if attn.norm_k is None else attn.norm_k(key)), value

        regional = self.active_regions(states) if any(c.binding == "region" for c in self.changes) else []
        if not regional:
            hidden_states = self.attend(query, *heads(*self.project(attn, states)), attention_mask, states)
        else:
            hidden_states = self.attend_regions(attn, query, heads, states, attention_mask, regional)
        hidden_states = hidden_states.transpose(1, 2).reshape(batch_size, -1, attn.heads * head_dim).to(query.dtype)
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor

    def attend(self, query, key, value, attention_mask, states):
        return F.scaled_dot_product_attention(query, key, value, attn_mask=attention_mask, dropout_p=0.0, is_causal=False)

    @torch.compiler.disable
    def active_regions(self, states: torch.Tensor) -> list[BoundChange]:
        """The region-bound changes that act on these encoder states (their token is there, their strength is not 0).
        Only processors with a region-bound change ask, so the token-bound path stays as it was (and compiles so)."""
        masks = self.positions.masks_for_states(states)
        return [c for c in self.changes if c.binding == "region" and c.owner.strength * c.owner.factor != 0.0
                and masks[c.index, 0].any()]

    @torch.compiler.disable
    def attend_regions(self, attn, query, heads, states, attention_mask, regional):
        """Region binding: each concept's change acts only on the pixels where the base model attends its
        class word (its token where no class word follows), so a second object or the background drawn
        elsewhere keeps the base model's output. out = base + sum_c R_c * (out_c - base)."""
        others = [c for c in self.changes if c.binding != "region"]
        key, value = self.project(attn, states, others)
        masks = self.positions.masks_for_states(states)
        k, v = heads(key, value)
        # Every row gets the plain attention (SDPA): rows without a token (the unconditional branch) stay
        # bit for bit the base model's. Only rows with a token pay for the probabilities and the changed attention.
        base = self.attend(query, k, v, attention_mask, states)
        rows = torch.stack([masks[c.index, 0].any(-1) for c in regional]).any(0).nonzero().flatten()
        mask = None if attention_mask is None else attention_mask[rows]
        logits = query[rows] @ k[rows].transpose(-1, -2) * query.shape[-1] ** -0.5
        if mask is not None:
            logits = logits + mask
        probs = logits.softmax(dim=-1)  # (r, heads, q, n)
        attended = []
        for change in regional:
            token, class_word = masks[change.index, 0, rows], masks[change.index, 1, rows]  # (r, n)
            where = torch.where(class_word.any(-1, keepdim=True), class_word, token).to(probs.dtype)
            attended.append(torch.einsum("rhqn,rn->rq", probs, where) / probs.shape[1])  # (r, q)
        # Several concepts share a pixel in proportion to how much it attends each one's word, so each
        # keeps to its own object; a single concept takes its whole region.
        total = torch.stack(attended).sum(0).clamp_min(torch.finfo(probs.dtype).tiny)
        out = base[rows]
        for change, mine in zip(regional, attended):
            changed = heads(*self.add_change(attn, states, masks, change, key, value))
            region = (region_weights(mine) * (mine / total if len(regional) > 1 else 1))[:, None, :, None]
            out = out + region * (self.attend(query[rows], changed[0][rows], changed[1][rows], mask, states) - base[rows])
        base = base.clone()
        base[rows] = out
        return base


class TrainingBoundAttnProcessor(BoundAttnProcessor):
    """For training: the module's own to_k/to_v weights are the trained ones; the base projection uses a
    frozen copy, and the change (trained - base) acts at the bound positions only. So the optimizer,
    checkpoints and the concept file see the same parameters as merged training does."""

    def __init__(self, positions: TokenPositions, changes: list[BoundChange], base_k: torch.Tensor,
                 base_v: torch.Tensor, bias_k: torch.Tensor | None = None, bias_v: torch.Tensor | None = None):
        super().__init__(positions, changes)
        self.base_k, self.base_v = base_k, base_v
        self.bias_k, self.bias_v = bias_k, bias_v
        # The attention loss's input: per call, each concept's attention map (c, b, queries), summed over
        # its token's positions and averaged over heads. None: not recorded (plain SDPA).
        self.maps: list[torch.Tensor] | None = None

    def attend(self, query, key, value, attention_mask, states):
        if self.maps is None:
            return super().attend(query, key, value, attention_mask, states)
        # The attention probabilities themselves are needed (SDPA does not return them): (b, heads, q, n).
        logits = query @ key.transpose(-1, -2) * query.shape[-1] ** -0.5
        if attention_mask is not None:
            logits = logits + attention_mask
        probs = logits.softmax(dim=-1)
        token = self.positions.masks_for_states(states)[:, 0].to(probs.dtype)  # (c, b, n)
        self.maps.append(torch.einsum("bhqn,cbn->cbq", probs, token) / probs.shape[1])
        return probs @ value

    def base_projections(self, attn, states):
        return F.linear(states, self.base_k, self.bias_k), F.linear(states, self.base_v, self.bias_v)

    def deltas(self, attn, change):
        return attn.to_k.weight - self.base_k, attn.to_v.weight - self.base_v


def region_weights(attended: torch.Tensor) -> torch.Tensor:
    """(b, q) attention to a word -> (b, q) weights in [0, 1]: 1 where the word is attended most in each
    frame, falling with its attention elsewhere (sharper or wider maps measured no better:
    docs/personalization.md)."""
    peak = attended.amax(dim=-1, keepdim=True).clamp_min(torch.finfo(attended.dtype).tiny)
    return (attended / peak).clamp(0, 1)


def take_attention_maps(unet: torch.nn.Module) -> list[torch.Tensor]:
    """The token attention maps recorded since the last call, (c, b, queries) per attn2 call, and forget them."""
    maps = []
    for attn in spatial_attn2_modules(unet).values():
        recorded = getattr(attn.processor, "maps", None)
        if recorded:
            maps += recorded
            recorded.clear()
    return maps


def spatial_attn2_modules(unet: torch.nn.Module) -> dict[str, torch.nn.Module]:
    """Path -> module for the spatial cross-attentions (never the motion modules' `attn2`)."""
    return {name: module for name, module in unet.named_modules() if _SPATIAL_ATTN2.match(name)}


def token_ids(tokenizer, tokens: list[str]) -> list[int]:
    ids = tokenizer.convert_tokens_to_ids(tokens)
    return [i for i in ids if i is not None and i != tokenizer.unk_token_id]


def class_word_ids(tokenizer, class_word: str | None) -> list[int]:
    return tokenizer.encode(class_word, add_special_tokens=False) if class_word else []


def install_bound_training(unet: torch.nn.Module, text_encoder: torch.nn.Module, tokenizer, tokens: list[str],
                           class_words: list[str], binding: str, record_attention: bool = False):
    """Put TrainingBoundAttnProcessors on every spatial attn2; returns a function that takes them off.
    `record_attention`: each processor keeps its token attention maps for the attention loss (`take_attention_maps`).

    All trained tokens are bound together (one change per module is trained for all concepts, as in
    merged training); the text encoder hook records ids for the masks.
    """
    positions = TokenPositions()

    class Live:  # training always runs at full strength
        strength, factor = 1.0, 1.0

    indices = [positions.add_concept(token_ids(tokenizer, [t]), class_word_ids(tokenizer, c))
               for t, c in zip(tokens, class_words)]
    originals = {}
    for name, attn in spatial_attn2_modules(unet).items():
        changes = [BoundChange(Live, i, binding, None, None) for i in indices]
        originals[name] = attn.processor
        attn.set_processor(TrainingBoundAttnProcessor(
            positions, changes, attn.to_k.weight.detach().clone(), attn.to_v.weight.detach().clone(),
            None if attn.to_k.bias is None else attn.to_k.bias.detach().clone(),
            None if attn.to_v.bias is None else attn.to_v.bias.detach().clone()))
    handle = positions.hook(text_encoder)
    if record_attention:
        for name in originals:
            spatial_attn2_modules(unet)[name].processor.maps = []

    def remove() -> None:
        handle.remove()
        modules = spatial_attn2_modules(unet)
        for name, processor in originals.items():
            modules[name].set_processor(processor)

    return remove
