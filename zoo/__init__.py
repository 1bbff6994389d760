"""zoo: building, storing, streaming and importing checkpoint zoos.

>>> import zoo
>>> zoo.build("digits_cnn", n=100, out="zoos/digits", seed=0, workers=2)   # or: metanet zoo build
>>> z = zoo.Zoo.open("zoos/digits")             # folder or "hf://user/repo"
>>> train, test = z.where(step="last").split([0.8, 0.2], seed=0)
>>> train.stacked(range(32)), train.graphs(range(32)), train.targets("test_acc")

Modules: :mod:`zoo.data` (offline datasets), :mod:`zoo.models` (architecture
registry), :mod:`zoo.recipes` (job samplers), :mod:`zoo.train` (``train_job``),
:mod:`zoo.build` (executors, build driver), :mod:`zoo.batched` (many networks as one
stacked model), :mod:`zoo.stacked` (what batched and single training share), :mod:`zoo.store` (on-disk layout, pack,
merge), :mod:`zoo.reader` (``Zoo``), :mod:`zoo.verify`, :mod:`zoo.importers`,
:mod:`zoo.hub`.
"""
from .build import Executor, ProcessExecutor, SequentialExecutor, build, make_executor
from .batched import BatchedExecutor
from .data import DatasetNotFoundError, Splits, list_datasets, load_dataset, load_images
from .hub import pull, push
from .importers import FORMATS as IMPORT_FORMATS
from .importers import PickleRefusedError, import_zoo, load_checkpoint_file
from .models import create, list_models, register_model, sample_architecture
from .reader import Zoo
from .recipes import Recipe, get_recipe, list_recipes, register_recipe
from .store import ZooError, merge, pack
from .train import Job, JobResult, train_job
from .verify import VerifyReport, verify

__all__ = [
    "Zoo", "ZooError", "build", "pack", "merge", "verify", "VerifyReport",
    "Executor", "SequentialExecutor", "ProcessExecutor", "BatchedExecutor", "make_executor",
    "Job", "JobResult", "train_job",
    "Recipe", "get_recipe", "list_recipes", "register_recipe",
    "create", "list_models", "register_model", "sample_architecture",
    "load_dataset", "load_images", "list_datasets", "Splits", "DatasetNotFoundError",
    "import_zoo", "IMPORT_FORMATS", "PickleRefusedError", "load_checkpoint_file",
    "push", "pull",
]
