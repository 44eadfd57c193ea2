"""The MLflow pyfunc of an exported trial: a plain open_clip model, logged by "models from code".

MLflow runs this file when the model is logged and when it is loaded, so it imports only mlflow, numpy, torch
and open_clip, never ranksearch: a registered model loads and runs wherever open_clip is installed.

    model = mlflow.pyfunc.load_model("models:/NAME@champion")
    out = model.predict({"texts": ["a red star", "a blue ring"], "images": images})

``images``: float32 (N, 3, H, W) already preprocessed, or uint8 (N, H, W, 3) pixels (preprocessed here with
the model's own transform). The answer holds L2-normalised ``image_embeds`` / ``text_embeds`` and, with both,
``logits_per_image`` (N images × M texts, scaled by the model's logit scale).
"""

from __future__ import annotations

import warnings
from typing import Any

import mlflow
from mlflow.pyfunc import PythonModel

ARTIFACT = "open_clip"  # the artifact key: the exported open_clip local-dir folder

# MLflow asks for type hints on predict to infer a signature of rows; a dict of arrays has none to give
warnings.filterwarnings("ignore", message=".*type hints to the `predict` method", category=UserWarning)


class OpenClipModel(PythonModel):
    def load_context(self, context):
        import open_clip

        folder = context.artifacts[ARTIFACT]
        self.model = open_clip.create_model(f"local-dir:{folder}").eval()
        self.tokenizer = open_clip.get_tokenizer(f"local-dir:{folder}")
        self.preprocess = open_clip.image_transform(
            self.model.visual.image_size, is_train=False, **_preprocess_cfg(self.model)
        )

    # no type hints: MLflow would turn them into a (list-of-rows) signature that a dict of arrays does not fit
    def predict(self, context, model_input, params=None):
        import numpy as np
        import torch
        import torch.nn.functional as F

        out: dict[str, Any] = {}
        with torch.no_grad():
            if model_input.get("images") is not None:
                images = _as_batch(np.asarray(model_input["images"]), self.preprocess)
                out["image_embeds"] = F.normalize(self.model.encode_image(images), dim=-1)
            if model_input.get("texts") is not None:
                tokens = self.tokenizer(list(model_input["texts"]))
                out["text_embeds"] = F.normalize(self.model.encode_text(tokens), dim=-1)
            if "image_embeds" in out and "text_embeds" in out:
                scale = self.model.logit_scale.exp()
                out["logits_per_image"] = scale * out["image_embeds"] @ out["text_embeds"].t()
        return {k: v.numpy() for k, v in out.items()}


def _preprocess_cfg(model: Any) -> dict[str, Any]:
    cfg = dict(getattr(model.visual, "preprocess_cfg", {}) or {})
    return {k: cfg[k] for k in ("mean", "std", "interpolation", "resize_mode") if k in cfg}


def _as_batch(images: Any, preprocess: Any) -> Any:
    """(N, 3, H, W) floats as given; (N, H, W, 3) uint8 pixels through the model's eval transform."""
    import torch
    from PIL import Image

    if images.dtype == "uint8" and images.ndim == 4 and images.shape[-1] == 3:
        return torch.stack([preprocess(Image.fromarray(im)) for im in images])
    return torch.as_tensor(images, dtype=torch.float32)


mlflow.models.set_model(OpenClipModel())
