"""Text-to-SQL: the Spider family, BIRD, GeoQuery/Restaurants and generated data, scored by execution."""

from kdlight.tasks.text2sql.spider import PromptParts, SpiderSource
from kdlight.tasks.text2sql.task import GeneratedSource, Text2SQLTask
from kdlight.tasks.text2sql.text2sql_data import Text2SQLDataSource

__all__ = ["GeneratedSource", "PromptParts", "SpiderSource", "Text2SQLDataSource", "Text2SQLTask"]
