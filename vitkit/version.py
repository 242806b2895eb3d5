"""vitkit's version, in a module of its own so that anything can read it without importing the package."""

VERSION = "0.1.0"
