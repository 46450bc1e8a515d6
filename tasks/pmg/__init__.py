"""The PMG method as pure functions: prompts, history serialization, keyword parsing, conditioning,
candidate selection and evaluation metrics. No model imports and no I/O (model calls go through pmg_models)."""
