"""Stand-in for transformers' `tests/utils/test_configuration_utils.py` (not in the 5.24.0 sdist).

`ConfigTester.check_config_arguments_init` reads `config_common_kwargs` only for configs without
sub-configs; CapDec's config is composite, so these values are a small sample of `PreTrainedConfig`'s
common arguments, enough for the vendored module to import and run.
"""

config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "output_attentions": True,
    "dtype": "float16",
    "tie_word_embeddings": False,
    "is_encoder_decoder": True,
    "architectures": ["BertModel"],
    "id2label": {0: "label"},
    "label2id": {"label": "0"},
    "problem_type": "regression",
}
