"""Stand-in for transformers' `tests/generation/test_utils.py` (in the repository, not in the 5.24.0 sdist).

capdec's own `GenerationTesterMixin`, not upstream code: the generation contracts of upstream's mixin that
apply to a prefix captioner. The class using it provides `model_tester.prepare_config_and_inputs_for_common()`
returning `(config, inputs)` with `pixel_values`, `input_ids` (a left-padded text prompt) and `attention_mask`.
"""

import copy
import tempfile

import torch


class GenerationTesterMixin:
    max_new_tokens = 5

    def _model_and_inputs(self):
        config, inputs = self.model_tester.prepare_config_and_inputs_for_common()
        torch.manual_seed(0)
        model = self.all_generative_model_classes[0](config).eval()
        return model, inputs

    def _generate(self, model, inputs, **kwargs):
        kwargs = {"max_new_tokens": self.max_new_tokens, "min_new_tokens": self.max_new_tokens, **kwargs}
        if kwargs.get("do_sample"):
            torch.manual_seed(0)
        return model.generate(**copy.deepcopy(inputs), **kwargs)

    def _check_dict_matches_tensor(self, **kwargs):
        model, inputs = self._model_and_inputs()
        tensor = self._generate(model, inputs, **kwargs)
        output = self._generate(
            model,
            inputs,
            return_dict_in_generate=True,
            output_scores=True,
            output_logits=True,
            output_hidden_states=True,
            output_attentions=True,
            **kwargs,
        )
        self.assertTrue(torch.equal(output.sequences, tensor))
        prompt_length = inputs["input_ids"].shape[1]
        self.assertEqual(output.sequences.shape[1], prompt_length + self.max_new_tokens)
        # One score per new token, over the decoder's vocabulary.
        self.assertEqual(len(output.scores), self.max_new_tokens)
        self.assertEqual(len(output.logits), self.max_new_tokens)
        self.assertEqual(output.scores[0].shape[-1], model.config.text_config.vocab_size)
        self.assertEqual(len(output.hidden_states), self.max_new_tokens)
        self.assertEqual(len(output.attentions), self.max_new_tokens)
        return model, inputs, output

    def test_greedy_generate_dict_outputs(self):
        model, inputs, output = self._check_dict_matches_tensor(do_sample=False, num_beams=1)
        # Greedy: each returned token is the argmax of its score.
        prompt_length = inputs["input_ids"].shape[1]
        chosen = torch.stack([score.argmax(-1) for score in output.scores], dim=1)
        self.assertTrue(torch.equal(chosen, output.sequences[:, prompt_length:]))

    def test_sample_generate_dict_output(self):
        self._check_dict_matches_tensor(do_sample=True, num_beams=1, num_return_sequences=2)

    def test_beam_search_generate_dict_output(self):
        _, _, output = self._check_dict_matches_tensor(do_sample=False, num_beams=2, num_return_sequences=2)
        self.assertEqual(output.sequences_scores.shape[0], output.sequences.shape[0])

    def test_beam_sample_generate_dict_output(self):
        self._check_dict_matches_tensor(do_sample=True, num_beams=2)

    def test_generate_without_prompt_returns_new_tokens(self):
        model, inputs = self._model_and_inputs()
        inputs = {"pixel_values": inputs["pixel_values"]}
        output = self._generate(model, inputs, return_dict_in_generate=True)
        self.assertEqual(output.sequences.shape[1], self.max_new_tokens)
        self.assertTrue(torch.equal(output.sequences, self._generate(model, inputs)))

    def test_generate_continue_from_past_key_values(self):
        model, inputs = self._model_and_inputs()
        full = self._generate(model, inputs, max_new_tokens=6, min_new_tokens=6)
        first = self._generate(
            model, inputs, max_new_tokens=3, min_new_tokens=3, return_dict_in_generate=True
        )
        continued = model.generate(
            pixel_values=inputs["pixel_values"],
            input_ids=first.sequences,
            attention_mask=torch.cat(
                [
                    inputs["attention_mask"],
                    torch.ones_like(first.sequences[:, inputs["input_ids"].shape[1] :]),
                ],
                dim=1,
            ),
            cache=first.cache,
            max_new_tokens=3,
            min_new_tokens=3,
        )
        self.assertTrue(torch.equal(continued, full))

    def test_assisted_decoding_matches_greedy_search(self):
        model, inputs = self._model_and_inputs()
        inputs = {key: value[1:] for key, value in inputs.items()}  # transformers assists one row at a time
        greedy = self._generate(model, inputs)
        assisted = self._generate(model, inputs, assistant_model=model)
        self.assertTrue(torch.equal(assisted, greedy))

    def test_assisted_decoding_sample(self):
        model, inputs = self._model_and_inputs()
        inputs = {key: value[1:] for key, value in inputs.items()}
        output = self._generate(
            model, inputs, assistant_model=model, do_sample=True, return_dict_in_generate=True
        )
        self.assertEqual(output.sequences.shape[1], inputs["input_ids"].shape[1] + self.max_new_tokens)

    def test_prompt_lookup_decoding_matches_greedy_search(self):
        model, inputs = self._model_and_inputs()
        inputs = {key: value[1:] for key, value in inputs.items()}
        greedy = self._generate(model, inputs)
        lookup = self._generate(model, inputs, prompt_lookup_num_tokens=2)
        self.assertTrue(torch.equal(lookup, greedy))

    def test_generate_with_static_cache(self):
        model, inputs = self._model_and_inputs()
        dynamic = self._generate(model, inputs)
        static = self._generate(model, inputs, cache_implementation="static")
        self.assertTrue(torch.equal(static, dynamic))

    def test_generate_compile_model_forward_fullgraph(self):
        # _can_compile_fullgraph: decoding steps trace into one graph with a static cache (no graph break). The
        # eager backend keeps it quick on CPU; transformers compiles on accelerators only unless told otherwise.
        from transformers import CompileConfig

        model, inputs = self._model_and_inputs()
        expected = self._generate(model, inputs, cache_implementation="static")
        compile_config = CompileConfig(fullgraph=True, dynamic=False, backend="eager")
        compile_config._compile_all_devices = True
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        compiled = self._generate(model, inputs, cache_implementation="static", compile_config=compile_config)
        self.assertTrue(torch.equal(compiled, expected))
        self.assertGreater(torch._dynamo.utils.counters["stats"]["unique_graphs"], 0)  # it did compile

    def test_left_padding_compatibility(self):
        # A row scores and generates the same whether or not the batch left-pads it.
        model, inputs = self._model_and_inputs()
        unpadded = {key: value[:1] for key, value in inputs.items()}
        unpadded["input_ids"] = unpadded["input_ids"][:, 2:]
        unpadded["attention_mask"] = unpadded["attention_mask"][:, 2:]
        padded = {key: value[:1].clone() for key, value in inputs.items()}
        padded["attention_mask"][:, :2] = 0
        self.assertTrue(torch.equal(self._generate(model, padded)[:, 2:], self._generate(model, unpadded)))

    def test_generate_from_saved_model(self):
        model, inputs = self._model_and_inputs()
        expected = self._generate(model, inputs)
        with tempfile.TemporaryDirectory() as folder:
            model.save_pretrained(folder)
            reloaded = type(model).from_pretrained(folder).eval()
        self.assertTrue(torch.equal(self._generate(reloaded, inputs), expected))
