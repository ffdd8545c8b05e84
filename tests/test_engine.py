"""The fast paths must compute the same thing as the plain ones."""
import pytest
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, DataCollatorForSeq2Seq

from domaintune.core.chat import encode_row
from domaintune.training.packing import PACKED_ATTENTION, PackedCollator, supervised_positions_loss


# Packed rows are exact with transformers' block-diagonal SDPA mask and with domaintune's per-example attention.
@pytest.fixture(params=["sdpa", PACKED_ATTENTION])
def model_and_features(tiny_model_dir, request):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.config.use_cache = False
    model.config._attn_implementation = request.param
    rows = [
        {"messages": [{"role": "user", "content": "Short?"}, {"role": "assistant", "content": "Yes."}]},
        {"messages": [{"role": "system", "content": "Be exact."}, {"role": "user", "content": "A much longer question about the loan terms and the collateral?"}, {"role": "assistant", "content": "[Bank - ORGANIZATION, Borrower - PERSON]"}]},
        {"messages": [{"role": "user", "content": "Mid length question here?"}, {"role": "assistant", "content": "No entities found"}]},
    ]
    return model, tokenizer, [encode_row(tokenizer, row, 256) for row in rows]


def per_token_losses(logits, labels):
    return torch.nn.functional.cross_entropy(logits[0, :-1], labels[0, 1:], ignore_index=-100, reduction="none")


def test_packing_gives_the_same_per_example_loss(model_and_features):
    model, tokenizer, features = model_and_features
    packed = PackedCollator(supervised_logits_only=False, row_tokens=4096)(features)
    assert packed["input_ids"].shape[0] == 1
    with torch.no_grad():
        losses = per_token_losses(model(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).logits, packed["labels"])
    starts = [0]
    for feature in features:
        starts.append(starts[-1] + len(feature["input_ids"]))
    for index, feature in enumerate(features):
        single = DataCollatorForSeq2Seq(tokenizer, padding=True)([feature])
        with torch.no_grad():
            expected = model(**{k: single[k] for k in ("input_ids", "attention_mask")}, labels=single["labels"]).loss
        # Token t of the packed row predicts t+1; an example's predictions sit in [start, end - 1).
        segment = losses[starts[index] : starts[index + 1] - 1]
        mask = packed["labels"][0, starts[index] + 1 : starts[index + 1]] != -100
        assert torch.allclose(segment[mask].mean(), expected, atol=1e-5)


def test_rows_are_capped_and_padding_changes_nothing(model_and_features):
    model, tokenizer, features = model_and_features
    lengths = [len(f["input_ids"]) for f in features]
    batch = PackedCollator(supervised_logits_only=False, row_tokens=max(lengths), pad_token_id=tokenizer.pad_token_id)(features)
    assert batch["input_ids"].shape[0] >= 2 and batch["input_ids"].shape[1] == max(lengths)
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"]).logits
    flat = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), batch["labels"][:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
    )
    expected = 0.0
    for feature in features:
        single = DataCollatorForSeq2Seq(tokenizer, padding=True)([feature])
        supervised = int((single["labels"][0, 1:] != -100).sum())
        with torch.no_grad():
            expected += model(input_ids=single["input_ids"], labels=single["labels"]).loss * supervised
    assert torch.allclose(flat, expected, atol=1e-4)


def test_per_example_attention_matches_the_block_diagonal_mask(tiny_model_dir):
    """Loss and gradients of packed rows: per-example attention equals transformers' masked SDPA."""
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.config.use_cache = False
    texts = ["The borrower repays.", "Interest accrues daily on the outstanding principal amount.", "Fees are due."]
    features = [encode_row(tokenizer, {"text": text}, 64) for text in texts]
    batch = PackedCollator(False, row_tokens=40, pad_token_id=tokenizer.pad_token_id)(features)
    results = {}
    for implementation in ("sdpa", PACKED_ATTENTION):
        model.config._attn_implementation = implementation
        model.zero_grad()
        loss = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"], labels=batch["labels"]).loss
        loss.backward()
        results[implementation] = (loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()})
    (mask_loss, mask_grads), (packed_loss, packed_grads) = results["sdpa"], results[PACKED_ATTENTION]
    assert torch.allclose(packed_loss, mask_loss, atol=1e-6)
    for name, grad in mask_grads.items():
        assert torch.allclose(packed_grads[name], grad, atol=1e-6), name


def test_supervised_logits_only_matches_the_full_lm_head(model_and_features):
    model, tokenizer, features = model_and_features
    row_tokens = max(len(f["input_ids"]) for f in features)  # several rows, with padding
    plain_batch = PackedCollator(False, row_tokens, tokenizer.pad_token_id)(features)
    fast_batch = PackedCollator(True, row_tokens, tokenizer.pad_token_id)(features)
    supervised = int((plain_batch["labels"][:, 1:] != -100).sum())
    assert int(fast_batch["logits_to_keep"].sum()) == supervised < plain_batch["input_ids"].numel() / 2

    model.zero_grad()
    logits = model(input_ids=plain_batch["input_ids"], position_ids=plain_batch["position_ids"]).logits
    plain_loss = torch.nn.functional.cross_entropy(
        logits[:, :-1].reshape(-1, logits.shape[-1]), plain_batch["labels"][:, 1:].reshape(-1), ignore_index=-100, reduction="sum"
    ) / supervised
    plain_loss.backward()
    plain_grads = {n: p.grad.clone() for n, p in model.named_parameters()}

    model.zero_grad()
    labels = fast_batch.pop("labels")
    outputs = model(**fast_batch)
    assert outputs.logits.shape[0] == supervised
    fast_loss = supervised_positions_loss(outputs, labels)
    fast_loss.backward()

    assert torch.allclose(fast_loss, plain_loss, atol=1e-6)
    for name, param in model.named_parameters():
        assert torch.allclose(param.grad, plain_grads[name], atol=1e-6), name


def test_trainer_with_packing_and_padding_agree_on_validation_loss(tiny_recipe):
    import json

    import domaintune

    # Same sampling order for both runs: length grouping only applies without packing.
    tiny_recipe["training"].update(max_steps=2, eval_every=2, save_every=2, group_by_length=False)
    eval_losses = []
    for packing in (True, False):
        tiny_recipe["training"]["packing"] = packing
        run = domaintune.train(tiny_recipe)
        eval_losses.append(next(json.loads(l)["eval_loss"] for l in run.metrics.read_text().splitlines() if "eval_loss" in l))
    assert eval_losses[0] == pytest.approx(eval_losses[1], rel=1e-4)


def test_pack_rows_fills_rows_first_fit_decreasing():
    from domaintune.training.packing import pack_rows

    # 9 exceeds the cap and rides alone; 5 opens a row; 3 + 3 share one; 2 fits nowhere left.
    assert sorted(pack_rows([5, 3, 3, 2, 9], row_tokens=6)) == [[0], [1, 2], [3], [4]]


def test_packed_attention_for_keeps_the_cpu_loop_and_gives_a_gpu_a_batched_kernel(monkeypatch):
    import transformers.utils

    from domaintune.training.packing import FLASH_ATTENTION, packed_attention_for

    assert packed_attention_for("cpu", bf16=True) == PACKED_ATTENTION
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: False)
    assert packed_attention_for(torch.device("cuda", 0), bf16=True) == "sdpa"
    monkeypatch.setattr(transformers.utils, "is_flash_attn_2_available", lambda: True)
    assert packed_attention_for("cuda", bf16=True) == FLASH_ATTENTION
    assert packed_attention_for("cuda", bf16=False) == "sdpa"  # flash-attn has no fp32 kernels


def test_batching_on_a_gpu_skips_the_per_example_loop_and_on_a_cpu_keeps_it(tiny_model_dir):
    from domaintune.training.packing import batching, ordered_supervised_loss

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    for device, attention, loss in (("cpu", PACKED_ATTENTION, supervised_positions_loss), ("cuda", "sdpa", ordered_supervised_loss)):
        model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
        collator, compute_loss = batching(model, tokenizer, True, True, 64, device=device, bf16=False)
        assert (model.config._attn_implementation, collator.attention, compute_loss) == (attention, attention, loss)


class HostSyncs(torch.utils._python_dispatch.TorchDispatchMode):
    """The ops that read a tensor's values back to the host (a device sync on a GPU): .item()/bool(),
    nonzero, and boolean-mask indexing, which must count the mask before it can allocate."""

    def __init__(self):
        super().__init__()
        self.found = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        boolean_index = func is torch.ops.aten.index.Tensor and any(
            isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in args[1])
        if boolean_index or func in (torch.ops.aten._local_scalar_dense.default, torch.ops.aten.nonzero.default,
                                     torch.ops.aten.masked_select.default):
            self.found.append(str(func))
        return func(*args, **kwargs)


def gpu_layout_features(tokenizer):
    rows = [
        {"messages": [{"role": "user", "content": "Short?"}, {"role": "assistant", "content": "Yes."}]},
        {"messages": [{"role": "user", "content": "A much longer question about the loan terms and the collateral?"}, {"role": "assistant", "content": "[Bank - ORGANIZATION, Borrower - PERSON]"}]},
        {"messages": [{"role": "user", "content": "Mid length question here?"}, {"role": "assistant", "content": "No entities found"}]},
        {"messages": [{"role": "user", "content": "Who signs?"}, {"role": "assistant", "content": "[Jane Roe - PERSON]"}]},
    ]
    return [encode_row(tokenizer, row, 256) for row in rows]


def unpacked_loss_and_grads(model, tokenizer, features):
    """The reference: each example alone, loss summed over supervised tokens and divided by their count."""
    model.zero_grad()
    total, count = 0.0, 0
    for feature in features:
        single = DataCollatorForSeq2Seq(tokenizer, padding=True)([feature])
        supervised = int((single["labels"][0, 1:] != -100).sum())
        total = total + model(input_ids=single["input_ids"], labels=single["labels"]).loss * supervised
        count += supervised
    loss = total / count
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}


@pytest.mark.parametrize("attention", ["sdpa", "flash_attention_2"])
def test_gpu_layouts_match_the_unpacked_model_without_host_syncs(tiny_model_dir, attention):
    """The CUDA paths, run on CPU tensors: same loss and gradients as the examples one by one, and
    neither the forward nor the loss reads a tensor back. The one-row flash layout runs here through
    sdpa (flash-attn has no CPU kernels), which finds the examples from the position ids itself."""
    from domaintune.training.packing import ordered_supervised_loss

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float32)
    model.config.use_cache = False
    features = gpu_layout_features(tokenizer)
    expected_loss, expected_grads = unpacked_loss_and_grads(model, tokenizer, features)

    row_tokens = max(len(f["input_ids"]) for f in features)  # several rows, with padding
    batch = PackedCollator(True, row_tokens, tokenizer.pad_token_id, attention=attention)(features)
    assert batch["logits_to_keep"].dtype == torch.int64
    if attention == "sdpa":
        rows, width = batch["input_ids"].shape
        assert rows >= 2 and batch["attention_mask"].shape == (rows, 1, width, width)
    else:
        assert batch["input_ids"].shape[0] == 1 and batch["cu_seq_lens_q"].tolist()[-1] == batch["input_ids"].shape[1]
    model.zero_grad()
    model.config._attn_implementation = "sdpa"
    labels = batch.pop("labels")
    syncs = HostSyncs()
    with syncs:
        loss = ordered_supervised_loss(model(**batch), labels)
    loss.backward()

    if attention == "sdpa":  # the one-row layout's mask is transformers' own here, found from the position ids
        assert syncs.found == []
    assert torch.allclose(loss, expected_loss, atol=1e-5)
    for name, grad in expected_grads.items():
        assert torch.allclose(model.get_parameter(name).grad, grad, atol=1e-5), name


def test_the_cpu_path_reads_back_what_a_gpu_must_not():
    """HostSyncs sees the per-example loop's syncs (so an empty list above means something)."""
    from domaintune.training.packing import packed_attention

    query = torch.randn(1, 2, 6, 4)
    syncs = HostSyncs()
    with syncs:
        packed_attention(torch.nn.Module(), query, query, query, None, position_ids=torch.tensor([[0, 1, 2, 0, 1, 2]]))
    assert "aten.nonzero.default" in syncs.found
