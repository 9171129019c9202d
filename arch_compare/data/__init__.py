"""seqio glue: vocabularies, conversation formatting, feature converters and data amounts."""
