"""Test stand-in for ``torchvision.datasets``: only the names timm.data.dataset_factory imports
unconditionally.  (Places365, INaturalist, QMNIST, ImageNet are imported inside try/except
ImportError by timm and are deliberately absent.)"""
from . import _missing, _placeholder

CIFAR10 = _placeholder("datasets.CIFAR10")
CIFAR100 = _placeholder("datasets.CIFAR100")
MNIST = _placeholder("datasets.MNIST")
KMNIST = _placeholder("datasets.KMNIST")
FashionMNIST = _placeholder("datasets.FashionMNIST")
ImageFolder = _placeholder("datasets.ImageFolder")

__getattr__ = _missing(__name__)
