"""`illume-train STAGE --config RECIPE.yaml [overrides]`: one entry point over every stage (LightningCLI).

A recipe is a LightningCLI YAML (trainer / model / data sections). A config path that does not
exist as given is looked up among the recipes shipped in this package (`recipes/shapes/...`,
`recipes/illume-7b/...`). Any field can be overridden on the command line, e.g.
`illume-train tokenizer --config recipes/shapes/tokenizer.yaml --trainer.max_steps 200`.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from pathlib import Path

RECIPES = Path(__file__).parent / "recipes"


def _stages() -> dict[str, tuple[type, type]]:
    from .conversations import ConversationDataModule
    from .data import ImageDataModule
    from .stages.detokenizer import DetokenizerStage
    from .stages.encoder import EncoderStage
    from .stages.language_model import LanguageModelStage
    from .stages.mllm import MLLMStage
    from .stages.tokenizer import TokenizerStage

    return {
        "encoder": (EncoderStage, ImageDataModule),
        "tokenizer": (TokenizerStage, ImageDataModule),
        "detokenizer": (DetokenizerStage, ImageDataModule),
        "language_model": (LanguageModelStage, ConversationDataModule),
        "mllm": (MLLMStage, ConversationDataModule),
    }


def resolve_recipe(path: str) -> str:
    """The recipe path as given if it exists, else the shipped recipe of that name; an inline
    mapping (`{"model": {"lr": 0.5}}`, which jsonargparse takes as a config) as it is."""
    if path.lstrip().startswith("{") or Path(path).exists():
        return path
    for candidate in (
        RECIPES / path,
        RECIPES / Path(path).relative_to("recipes") if path.startswith("recipes/") else None,
    ):
        if candidate is not None and candidate.exists():
            return str(candidate)
    shipped = sorted(
        str(p.relative_to(RECIPES.parent))
        for p in RECIPES.rglob("*.yaml")
        if "chains" not in p.parts
    )
    raise FileNotFoundError(f"no recipe {path!r}; shipped recipes: {', '.join(shipped)}")


#: Third-party notices that tell a user of a stage nothing they can act on: deprecations inside
#: torchdata and Lightning, frozen parts (kept in eval mode on purpose), and LightningCLI's caution
#: about arguments given from Python (the demo's way of running a stage).
QUIET_WARNINGS = (
    r"'set_vital' is deprecated",
    r"`isinstance\(treespec, LeafSpec\)` is deprecated",
    r"Found \d+ module\(s\) in eval mode at the start of training",
    r"LightningCLI's args parameter is intended to run from within Python",
)


def quiet_known_warnings() -> None:
    import warnings

    for message in QUIET_WARNINGS:
        warnings.filterwarnings("ignore", message=message)


def run_stage(stage: str, args: Sequence[str] = (), run: bool = True):
    """Runs (or, with run=False, only builds) a stage with LightningCLI arguments; returns the CLI."""
    from lightning.pytorch.cli import LightningCLI

    quiet_known_warnings()

    from .precision import STAGES_IN_BF16, fast_precision

    stages = _stages()
    if stage not in stages:
        raise SystemExit(f"illume-train: unknown stage {stage!r}; stages: {', '.join(stages)}")
    args = list(args)
    recipes = []  # as the user named them, for the model card
    for i, arg in enumerate(args):
        if arg == "--config" and i + 1 < len(args):
            recipes.append(args[i + 1])
            args[i + 1] = resolve_recipe(args[i + 1])
        elif arg.startswith("--config="):
            recipes.append(arg.split("=", 1)[1])
            args[i] = "--config=" + resolve_recipe(arg.split("=", 1)[1])
    model_class, data_class = stages[stage]

    class StageCLI(LightningCLI):
        def before_instantiate_classes(self) -> None:
            # A recipe that names no precision trains in the fastest one measured for the stage
            # (illume_trainer.precision); the choice is saved with the run's config.yaml.
            config = self.config[self.subcommand] if self.subcommand else self.config
            if config.trainer.precision is None and stage in STAGES_IN_BF16:
                config.trainer.precision = fast_precision(config.trainer.accelerator)
            if config.trainer.logger in (None, True):
                config.trainer.logger = csv_logger(config.trainer.default_root_dir)

        def instantiate_trainer(self, **kwargs):
            trainer = super().instantiate_trainer(**kwargs)
            _describe_epochs_plainly(trainer)
            # what the stage's model card says it was trained with (stages.common.training_record)
            # (the recipe files; a config given inline as JSON, such as the demo's overrides, is not one)
            files = [r for r in recipes if not r.lstrip().startswith(("{", "["))]
            trainer.illume_stage = stage
            trainer.illume_recipe = " + ".join(files) if files else None
            return trainer

    return StageCLI(
        model_class,
        data_class,
        args=(["fit", *args] if run else args),
        run=run,
        save_config_kwargs={"overwrite": True},
        trainer_defaults={"enable_progress_bar": True},
    )


def csv_logger(root: str | None):
    """What `trainer.logger: true` (a recipe's default) means here: Lightning's CSVLogger in the
    run's folder, whatever else is installed (Lightning would pick TensorBoard where it is), so
    every run has the metrics.csv that the demo's report draws its curves from. A recipe that
    wants TensorBoard too lists both loggers (illume-trainer's README)."""
    from jsonargparse import Namespace

    return Namespace(
        class_path="lightning.pytorch.loggers.CSVLogger",
        init_args=Namespace(save_dir=root or ".", name="lightning_logs"),
    )


def _describe_epochs_plainly(trainer) -> None:
    """Lightning's default rich bar with "Epoch 0" where it printed "Epoch 0/-2": a run bounded by
    max_steps has max_epochs -1, and the bar printed max_epochs - 1. A bar a recipe chose stays."""
    from lightning.pytorch.callbacks import RichProgressBar

    class StepBoundedRichProgressBar(RichProgressBar):
        def _get_train_description(self, current_epoch: int) -> str:
            if self.trainer.max_epochs is not None and self.trainer.max_epochs >= 0:
                return super()._get_train_description(current_epoch)
            description = f"Epoch {current_epoch}"
            return f"{description:{max(len(description), len(self.validation_description))}}"

    bar = trainer.progress_bar_callback
    if type(bar) is RichProgressBar:  # Lightning's default, not one a recipe chose
        trainer.callbacks[trainer.callbacks.index(bar)] = StepBoundedRichProgressBar()


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        print("stages: " + ", ".join(_stages()))
        print("(self-enhancement, which draws through the whole pipeline: `illume self-enhance`)")
        return 0
    if argv[0] == "self-enhance":
        raise SystemExit(
            "illume-train: self-enhancement draws through the whole pipeline and is run by the "
            "`illume` package: illume self-enhance " + " ".join(argv[1:])
        )
    run_stage(argv[0], argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
