"""Training recipes: the optimisation choices that move numbers without changing the method.

``goalclip`` (the default) is the better-engineered recipe; ``reference`` sets the GOAL authors'
code's choices at once, to reproduce the papers' tables. Each differs in:

- weight decay scope: ``goalclip`` exempts biases, norms, embeddings and the logit scale (as CLIP
  and open_clip train, since decaying a temperature or a LayerNorm gain toward 0 has no
  regularising meaning); ``reference`` decays every parameter (one AdamW group).
- gradient clipping: ``goalclip`` clips the global norm at 1.0 (a guard against the rare
  exploding step); ``reference`` does not clip.
- precision: ``goalclip`` trains in fp32; ``reference`` trains GOAL (and its w/o-TSL ablation)
  with bf16 mixed precision (fp32 master weights) and the global-only / local-only baselines with
  bf16 *weights* (``bf16-weights``: the model and AdamW state held in bf16, no fp32 copy), as the
  authors' baseline scripts do. With bf16 weights an update smaller than half a bf16 ulp of a
  weight is lost, so at lr 5e-6 most elements do not move in a step.

Both recipes apply to SigLIP unchanged, since they are about optimisation, not the model: ``goalclip``
also exempts SigLIP's logit bias and its attention-pooling probe from weight decay (a bias and a learned
query token, like CLIP's class embedding); SigLIP's temperature is never clamped (it trains it freely),
whatever the recipe. ``reference`` on SigLIP is the GOAL authors' CLIP choices applied to it: they
trained only CLIP, so there is no SigLIP reference to follow.

Not training settings, so not part of a recipe: the authors split captions into sentences on
``'.'`` and feed text uncleaned; in goalclip sentences are split (and cleaned) when mining
(``goalclip mine``), and training locates the mined sentence in the caption, so those choices
belong to the mined manifest a run trains on.

Any of these settings given explicitly (flag or config file) overrides the recipe.
"""

from __future__ import annotations

from typing import Any

RECIPES = ("goalclip", "reference")
RECIPE_FIELDS = ("decay_all", "grad_clip", "precision")


def recipe_settings(recipe: str, method: str) -> dict[str, Any]:
    """The settings ``recipe`` chooses for ``method`` (see the module docstring for why)."""
    if recipe == "goalclip":
        return {"decay_all": False, "grad_clip": 1.0, "precision": "no"}
    if recipe == "reference":
        precision = "bf16-weights" if method in ("global", "local") else "bf16"
        return {"decay_all": True, "grad_clip": 0.0, "precision": precision}
    raise ValueError(f"--recipe must be one of {', '.join(RECIPES)}, got {recipe!r}")
