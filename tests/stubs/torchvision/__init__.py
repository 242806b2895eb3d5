"""TEST-ONLY stand-in for ``torchvision`` -- NOT the real package.

It exists solely so that timm (our parity *reference*) can be imported in the
test-suite on machines without a usable torchvision build.  timm imports a handful
of torchvision names at module load; none of them is executed when timm builds or
runs ``vision_transformer`` / ``deit`` / ``beit`` models.  So this package provides
exactly those names and nothing else:

* ``torchvision.ops.misc.FrozenBatchNorm2d``            placeholder class
* ``torchvision.datasets.{CIFAR10, CIFAR100, MNIST, KMNIST, FashionMNIST, ImageFolder}``
                                                         placeholder classes
* ``torchvision.transforms.ToTensor``                   placeholder class (timm subclasses it)
* ``torchvision.transforms.functional.InterpolationMode`` faithful copy of the enum
  (timm builds dict keys from its members at import time)

Placeholders raise ``NotImplementedError("test stand-in: ...")`` when instantiated.
Any other attribute raises ``AttributeError`` (so timm's ``try: from torchvision...
import X / except ImportError`` fallbacks take their "not available" branch).

Only ``tests/reference_timm.py`` may put this directory on ``sys.path``; vitkit itself
must never import torchvision.
"""

IS_TEST_STANDIN = True
__version__ = "0.0.0+test.standin"


def _placeholder(qualname: str) -> type:
    """A class that can be named, subclassed and used in ``isinstance`` but not instantiated."""

    def __init__(self, *args, **kwargs):
        raise NotImplementedError(
            f"test stand-in: torchvision.{qualname} is not implemented "
            "(tests/stubs/torchvision only lets timm import; install real torchvision to use it)"
        )

    module, _, name = f"torchvision.{qualname}".rpartition(".")
    return type(name, (), {"__init__": __init__, "__module__": module, "IS_TEST_STANDIN": True,
                           "__doc__": "test stand-in placeholder: not constructible"})


def _missing(module: str):
    """Module ``__getattr__`` giving a clear error for anything not stubbed."""

    def __getattr__(name: str):
        if name.startswith("__"):
            raise AttributeError(name)
        raise AttributeError(f"test stand-in: {module}.{name} is not provided by tests/stubs/torchvision")

    return __getattr__


__getattr__ = _missing("torchvision")
