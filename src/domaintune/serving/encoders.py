"""The non-generative models the server answers with: sentence embeddings (/v1/embeddings) and
sequence or token classification heads (/v1/classify). Each runs one request at a time under a lock, on the
GPU where there is one (as the generation engines do)."""
from __future__ import annotations

import threading
from typing import Any

from domaintune.config.runtime import inference_device
from domaintune.models.loading import on_inference_device


class Embedder:
    def __init__(self, path: str, trust_remote_code: bool = False):
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(path, device=inference_device(), trust_remote_code=trust_remote_code)
        self.lock = threading.Lock()

    def embed(self, texts: list[str]) -> tuple[list[list[float]], int]:
        """The texts' vectors, and the tokens the model read: each text cut at its max_seq_length, as encode does."""
        read = self.model.tokenizer(texts, truncation=True, max_length=self.model.max_seq_length)["input_ids"]
        tokens = sum(map(len, read))
        with self.lock:
            return self.model.encode(texts, convert_to_numpy=True).tolist(), tokens


class Classifier:
    """A sequence or token classification head model with id2label."""

    def __init__(self, path: str, trust_remote_code: bool = False):
        import json
        from pathlib import Path

        from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification, AutoTokenizer

        architecture = (json.loads((Path(path) / "config.json").read_text()).get("architectures") or [""])[0]
        self.per_token = architecture.endswith("ForTokenClassification")
        loader = AutoModelForTokenClassification if self.per_token else AutoModelForSequenceClassification
        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.model = on_inference_device(
            loader.from_pretrained(path, use_safetensors=True, trust_remote_code=trust_remote_code).eval())
        self.labels = {int(key): value for key, value in self.model.config.id2label.items()}
        self.lock = threading.Lock()

    def classify(self, texts: list[str]) -> tuple[list[dict[str, Any]], int]:
        import torch

        with self.lock, torch.inference_mode():
            batch = self.tokenizer(texts, padding=True, truncation=True, return_tensors="pt",
                                   return_offsets_mapping=self.per_token)
            offsets = batch.pop("offset_mapping", None)
            mask = batch["attention_mask"]
            inputs = {name: values.to(self.model.device) for name, values in batch.items()}
            probabilities = self.model(**inputs).logits.float().softmax(-1).cpu()
        tokens = int(mask.sum())
        if not self.per_token:
            return [self._scores(row) for row in probabilities], tokens
        results = []
        for index, text in enumerate(texts):
            entities = []
            for position, row in enumerate(probabilities[index]):
                start, end = (int(value) for value in offsets[index, position])
                if end > start and mask[index, position]:
                    entities.append({"text": text[start:end], "start": start, "end": end, **self._scores(row)})
            results.append({"tokens": entities})
        return results, tokens

    def _scores(self, row) -> dict[str, Any]:
        best = int(row.argmax())
        return {"label": self.labels[best], "score": float(row[best]),
                "scores": {self.labels[index]: float(value) for index, value in enumerate(row)}}

