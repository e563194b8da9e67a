"""transformers' own model tests (ModelTesterMixin, ConfigTester) and the generation contracts run against a
tiny CapDec.

The upstream mixins come from transformers' source distribution of the installed version: `make test` fetches
them once into `tests/transformers_upstream/` (`fetch.py`; see its README), so tests run without network.
Each test kept out below does not apply to a prefix captioner; its reason is on the line.
"""

import unittest
from pathlib import Path

import torch

UPSTREAM = Path(__file__).resolve().parent / "transformers_upstream"
if not (UPSTREAM / "test_modeling_common.py").exists():
    raise RuntimeError(
        "transformers' test mixins are missing: run `make test` (or `python tests/transformers_upstream/fetch.py`), "
        "which fetches them from the transformers source distribution."
    )

from modeling_capdec import CapDecConfig, CapDecForConditionalGeneration  # noqa: E402
from tests.tiny_models import random_clip_config, tiny_gpt2_config  # noqa: E402
from tests.transformers_upstream.generation.test_utils import GenerationTesterMixin  # noqa: E402
from tests.transformers_upstream.test_configuration_common import ConfigTester  # noqa: E402
from tests.transformers_upstream.test_modeling_common import (  # noqa: E402
    ModelTesterMixin,
    floats_tensor,
    ids_tensor,
)


def _kept_out(reason: str):
    """A generic test that does not apply to a prefix captioner, skipped with its one-line reason."""
    return unittest.skip(reason)(lambda self: None)


class CapDecModelTester:
    def __init__(self, parent, batch_size: int = 2, text_length: int = 7, prefix_length: int = 3):
        self.parent = parent
        self.batch_size = batch_size
        self.text_length = text_length
        self.prefix_length = prefix_length
        # The decoder sees prefix + text: hidden states and attentions cover both.
        self.seq_length = prefix_length + text_length
        self.vocab_size = 99
        self.hidden_size = 32
        self.num_hidden_layers = 2
        self.num_attention_heads = 4
        self.image_size = 32
        self.is_training = True
        self.pad_token_id = 0

    def get_config(self) -> CapDecConfig:
        clip_config = random_clip_config(vocab_size=50)
        text_config = tiny_gpt2_config(vocab_size=self.vocab_size, eos_token_id=self.pad_token_id)
        text_config.initializer_range = 0.02
        text_config.n_positions = 64
        return CapDecConfig(
            clip_config=clip_config,
            text_config=text_config,
            mapping_type="transformer",
            prefix_length=self.prefix_length,
            clip_length=2,
            num_mapping_layers=1,
            num_mapping_heads=4,
        )

    def prepare_config_and_inputs_for_common(self):
        config = self.get_config()
        input_ids = ids_tensor([self.batch_size, self.text_length], self.vocab_size - 1) + 1
        attention_mask = torch.ones_like(input_ids)
        attention_mask[0, :2] = 0  # a left-padded row
        pixel_values = floats_tensor([self.batch_size, 3, self.image_size, self.image_size])
        return config, {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "pixel_values": pixel_values,
        }


class CapDecModelTest(ModelTesterMixin, GenerationTesterMixin, unittest.TestCase):
    all_model_classes = (CapDecForConditionalGeneration,)
    _is_composite = True

    def setUp(self):
        self.model_tester = CapDecModelTester(self)
        self.config_tester = ConfigTester(self, config_class=CapDecConfig, has_text_modality=False)

    def _prepare_for_class(self, inputs_dict, model_class, return_labels=False):
        # transformers adds labels for the model types registered in its Auto mappings; CapDec is a custom model.
        inputs_dict = super()._prepare_for_class(inputs_dict, model_class, return_labels=return_labels)
        if return_labels:
            inputs_dict["labels"] = inputs_dict["input_ids"].masked_fill(
                inputs_dict["attention_mask"] == 0, -100
            )
        return inputs_dict

    def test_config(self):
        self.config_tester.run_common_tests()

    # -- kept out: these do not apply to a prefix captioner --------------------------------------------------------
    test_model_base_model_prefix = _kept_out(
        "CapDec composes CLIP, a mapper and a causal LM with its head: there is no separate base model"
    )
    # (upstream expands the parameterised tests into _0, _1, _2)
    test_get_text_features_output_0 = test_get_text_features_output_1 = test_get_text_features_output_2 = (
        test_get_text_features_hidden_states
    ) = test_get_text_features_attentions = _kept_out(
        "expects text_config's tower fed the model's input_ids; CapDec's text features are CLIP's, on CLIP tokens"
    )
    test_get_image_features_output_0 = test_get_image_features_output_1 = test_get_image_features_output_2 = (
        _kept_out(
            "reads the vision tower's sizes from config.vision_config; CapDec's is clip_config.vision_config"
        )
    )
    test_training_gradient_checkpointing = test_training_gradient_checkpointing_use_reentrant_false = (
        test_training_gradient_checkpointing_use_reentrant_true
    ) = _kept_out(
        "patches the first checkpointing layer: frozen CLIP's, which runs in eval mode without gradients"
    )
