"""A deterministic generator of Spider-format text-to-SQL data (databases, schemas, questions)."""

from kdlight.tasks.text2sql.sqlgen.generator import GeneratorSpec, ensure_generated, generate

__all__ = ["GeneratorSpec", "ensure_generated", "generate"]
