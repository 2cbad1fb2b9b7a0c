"""Cards for Hugging Face BERT-style encoders: embeddings, encoder layers, pooler, classifier.

Layers for ``layer_decay``: the embeddings first, then each encoder layer, then the pooler and
the task head together on top (the ordering of the BERT/ELECTRA layer-decay recipes).
"""

from __future__ import annotations

from tunespec.planning.cards.base import Card, register_card

_BERT = "transformers.models.bert.modeling_bert."


def _encoder(prefix: str, head: str | None, family: str, pooler: bool = True) -> Card:
    """A card for an encoder under ``prefix`` ('' for the bare model) with a task head ``head``."""
    groups = {"embeddings": rf"{prefix}embeddings\..*", "blocks": rf"{prefix}encoder\.layer\.\d+\..*"}
    top = []
    if pooler:
        groups["pooler"] = rf"{prefix}pooler\..*"
        top.append(groups["pooler"])
    if head:
        groups["heads"] = head
        top.append(head)
    groups["backbone"] = "|".join(f"(?:{groups[g]})" for g in ("embeddings", "blocks", "pooler") if g in groups)
    layers = (groups["embeddings"], rf"{prefix}encoder\.layer\.(\d+)\..*",
              *(["|".join(f"(?:{t})" for t in top)] if top else []))
    return Card(family, groups, layers=layers, blocks=rf"{prefix}encoder\.layer\.{{n}}\..*")


register_card(_BERT + "BertModel", _encoder("", None, "BERT encoder (transformers)"))
register_card(_BERT + "BertForSequenceClassification",
              _encoder(r"bert\.", r"classifier\..*", "BERT sequence classifier (transformers)"))
register_card(_BERT + "BertForTokenClassification",
              _encoder(r"bert\.", r"classifier\..*", "BERT token classifier (transformers)", pooler=False))
