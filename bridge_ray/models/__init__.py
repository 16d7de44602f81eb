"""Model artifacts: built offline, checkpointed, merged, exported and published.

- ``assets``: the offline tiny tokenizer, random-init Llama and demo data;
- ``checkpoints``: verl's checkpoints found, merged into a Hugging Face model, checked;
- ``export``: a chosen checkpoint of a run merged (``bridge_ray.export``);
- ``hub``: a merged model uploaded with a model card (``bridge_ray.upload``).
"""
