"""Parts shared by several pipelines (schema types, sizes, image io, ...)."""
