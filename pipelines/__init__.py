"""Model pipelines, one subpackage per fal endpoint, plus shared parts under ``common``.

Importing this package (or any ``<name>/__init__``/``schema`` module) must not import a model
library: the API process uses the schemas to validate requests.
"""
