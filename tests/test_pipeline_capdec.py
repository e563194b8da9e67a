"""The saved folder as a user meets it: Auto classes and pipelines, in-process and where the package is absent."""

import json
import re
import textwrap

import numpy as np
import pytest
import torch
from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

from modeling_capdec import CapDecForConditionalGeneration, CapDecImageToTextPipeline
from modeling_capdec.pipeline_capdec import clip_rerank_order
from tests.tiny_models import run_in_fresh_process

GENERATE = {"max_new_tokens": 6, "num_beams": 2}

# Runs in a fresh interpreter in which `import modeling_capdec` fails: only the saved folder's code is there.
FRESH_PROCESS_SCRIPT = textwrap.dedent(
    """
    import json, sys

    class BlockCapdec:
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] == "modeling_capdec":
                raise ImportError("modeling_capdec is blocked in this process")

    sys.meta_path.insert(0, BlockCapdec())
    try:
        import modeling_capdec  # noqa: F401
        raise SystemExit("modeling_capdec should not be importable here")
    except ImportError:
        pass

    from transformers import AutoModelForImageTextToText, AutoProcessor, pipeline

    folder, images, generate = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])
    model = AutoModelForImageTextToText.from_pretrained(folder, trust_remote_code=True)
    processor = AutoProcessor.from_pretrained(folder, trust_remote_code=True)
    inputs = processor(images=images, return_tensors="pt")
    direct = processor.batch_decode(model.generate(**inputs, **generate))
    captioner = pipeline("image-to-text", model=folder, trust_remote_code=True)
    piped = [out[0]["generated_text"] for out in captioner(images, batch_size=3, **generate)]
    inferred = pipeline(model=folder, trust_remote_code=True)
    reranked = [out[0] for out in captioner(images, batch_size=2, max_new_tokens=5, clip_rerank=4)]
    frozen = not any(p.requires_grad for p in model.clip.parameters())
    print(json.dumps({"direct": direct, "pipeline": piped, "model_class": type(model).__name__,
                      "pipeline_class": type(inferred).__name__, "clip_frozen": frozen,
                      "module": type(model).__module__, "reranked": reranked}))
    """
)


@pytest.fixture(scope="module")
def expected_captions(saved_dir, image_files):
    model = CapDecForConditionalGeneration.from_pretrained(saved_dir)
    processor = AutoProcessor.from_pretrained(saved_dir)
    return processor.batch_decode(model.generate(**processor(images=image_files), **GENERATE))


def test_loads_and_captions_where_the_package_is_not_installed(
    saved_dir, image_files, expected_captions, tmp_path
):
    report = run_in_fresh_process(
        FRESH_PROCESS_SCRIPT, [str(saved_dir), json.dumps(image_files), json.dumps(GENERATE)], tmp_path
    )
    assert report["module"].startswith("transformers_modules.")  # the folder's copy of the code
    assert report["model_class"] == "CapDecForConditionalGeneration"
    assert report["pipeline_class"] == "CapDecImageToTextPipeline"  # the task is inferred from the config
    assert report["clip_frozen"]
    assert report["direct"] == expected_captions
    assert report["pipeline"] == expected_captions
    # CLIP reranking through the folder's own copy of the pipeline
    captioner = CapDecImageToTextPipeline(
        model=CapDecForConditionalGeneration.from_pretrained(saved_dir),
        processor=AutoProcessor.from_pretrained(saved_dir),
    )
    here = [out[0] for out in captioner(image_files, max_new_tokens=5, clip_rerank=4)]
    assert [out["generated_text"] for out in report["reranked"]] == [out["generated_text"] for out in here]
    assert [out["clip_score"] for out in report["reranked"]] == pytest.approx(
        [out["clip_score"] for out in here], abs=1e-5
    )


def test_image_to_text_pipeline_in_process(saved_dir, image_files, expected_captions, images):
    captioner = pipeline("image-to-text", model=str(saved_dir), trust_remote_code=True)
    batched = captioner(image_files, batch_size=3, **GENERATE)
    assert [out[0]["generated_text"] for out in batched] == expected_captions
    one = captioner(image_files[0], **GENERATE)
    assert one == [{"generated_text": expected_captions[0]}]
    # PIL images in other modes are converted and captioned
    gray = captioner([images[0].convert("L"), images[1].convert("RGBA")], max_new_tokens=3)
    assert len(gray) == 2 and all(isinstance(out[0]["generated_text"], str) for out in gray)


def test_pipeline_reports_a_bad_image_by_index(saved_dir, image_files, tmp_path):
    captioner = pipeline("image-to-text", model=str(saved_dir), trust_remote_code=True)
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    # The remote copy raises its own ImageLoadError class (a ValueError), so match by message.
    with pytest.raises(ValueError, match=r"Cannot load image 2 \('.*broken\.jpg'\)"):
        captioner([image_files[0], image_files[1], str(broken)], batch_size=2, max_new_tokens=3)


def test_pipeline_class_argument(saved_dir, image_files, expected_captions):
    captioner = pipeline("image-to-text", model=str(saved_dir), pipeline_class=CapDecImageToTextPipeline)
    assert [o[0]["generated_text"] for o in captioner(image_files, **GENERATE)] == expected_captions


def test_builtin_image_text_to_text_pipeline_without_remote_code(saved_dir, image_files, expected_captions):
    model = AutoModelForImageTextToText.from_pretrained(saved_dir)  # registered by importing modeling_capdec
    assert type(model) is CapDecForConditionalGeneration
    captioner = pipeline("image-text-to-text", model=str(saved_dir))
    # This built-in pipeline routes loose keywords to the processor: generation options go in generate_kwargs.
    outputs = captioner(images=image_files[:2], text="", generate_kwargs=GENERATE)
    assert [out["generated_text"] for out in outputs] == expected_captions[:2]


@pytest.mark.parametrize("batch_size", [None, 1, 2, 3])
@pytest.mark.parametrize("num_return_sequences", [1, 3])
def test_each_image_gets_its_own_captions_at_any_batch_size(
    model, processor, images, batch_size, num_return_sequences
):
    captioner = CapDecImageToTextPipeline(model=model, processor=processor)
    generate = {"max_new_tokens": 5, "num_beams": 3, "num_return_sequences": num_return_sequences}
    alone = [captioner(image, **generate) for image in images]
    assert len({out[0]["generated_text"] for out in alone}) > 1  # else the comparison proves little
    batching = {} if batch_size is None else {"batch_size": batch_size}
    together = captioner(images, **batching, **generate)
    assert [len(out) for out in together] == [num_return_sequences] * len(images)
    assert together == alone


def test_pipeline_refuses_an_empty_list(model, processor):
    captioner = CapDecImageToTextPipeline(model=model, processor=processor)
    with pytest.raises(ValueError, match="No images given"):
        captioner([])


def test_pipeline_can_skip_bad_images_and_report_them(model, processor, images, tmp_path):
    captioner = CapDecImageToTextPipeline(model=model, processor=processor)
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not a png")
    batch = [images[0], str(broken), images[1], np.zeros((0, 0, 3), dtype=np.uint8)]
    with pytest.raises(ValueError, match=r"Cannot load image 1 \('.*broken\.png'\)"):
        captioner(batch, batch_size=2, max_new_tokens=4)
    outputs = captioner(batch, batch_size=2, max_new_tokens=4, on_bad_image="skip")
    assert outputs[0] == captioner(images[0], max_new_tokens=4)
    assert outputs[2] == captioner(images[1], max_new_tokens=4)
    assert outputs[1][0]["generated_text"] is None and "image 1" in outputs[1][0]["error"]
    assert outputs[3][0]["generated_text"] is None and "image 3" in outputs[3][0]["error"]
    assert "no pixels" in outputs[3][0]["error"]
    with pytest.raises(ValueError, match="on_bad_image must be one of"):
        captioner(images, on_bad_image="ignore")


def clip_ranked_candidates(model, processor, images, candidates: int) -> list[list[tuple[str, float]]]:
    """Each image's beam candidates with CLIP's cosine to the image, best first: computed here from the CLIP
    embeddings, not through the pipeline or `clip_scores`."""
    pixel_values = processor(images=images, return_tensors="pt")["pixel_values"]
    generate = {"max_new_tokens": 5, "num_beams": candidates, "num_return_sequences": candidates}
    texts = processor.batch_decode(model.generate(pixel_values=pixel_values, **generate))
    clip_inputs = processor.clip_tokenizer(texts, padding=True, return_tensors="pt")
    image_embeds = model.get_image_embeds(pixel_values, normalize=True)
    text_embeds = model.get_text_embeds(
        clip_inputs["input_ids"], clip_inputs["attention_mask"], normalize=True
    )
    ranked = []
    for index, image_embed in enumerate(image_embeds):
        rows = range(index * candidates, (index + 1) * candidates)
        scored = [(texts[row], float(text_embeds[row] @ image_embed)) for row in rows]
        ranked.append(sorted(scored, key=lambda pair: -pair[1]))
    return ranked


@pytest.mark.parametrize("batch_size", [1, 3])
def test_clip_rerank_keeps_the_candidates_clip_puts_nearest_the_image(model, processor, images, batch_size):
    captioner = CapDecImageToTextPipeline(model=model, processor=processor)
    expected = clip_ranked_candidates(model, processor, images, candidates=4)
    beam_best = [out[0]["generated_text"] for out in captioner(images, max_new_tokens=5, num_beams=4)]
    # Not vacuous: on some image CLIP prefers another beam than beam search's own best.
    assert any(ranked[0][0] != best for ranked, best in zip(expected, beam_best, strict=True))
    top = captioner(images, batch_size=batch_size, max_new_tokens=5, clip_rerank=4)
    assert [[out["generated_text"] for out in outs] for outs in top] == [[r[0][0]] for r in expected]
    every = captioner(images, batch_size=batch_size, max_new_tokens=5, clip_rerank=4, num_return_sequences=4)
    for outs, ranked in zip(every, expected, strict=True):
        assert [out["generated_text"] for out in outs] == [text for text, _ in ranked]
        assert [out["clip_score"] for out in outs] == pytest.approx([score for _, score in ranked], abs=1e-5)


def test_clip_rerank_from_samples_and_from_more_beams(model, processor, images):
    captioner = CapDecImageToTextPipeline(model=model, processor=processor)
    sampled = captioner(images, max_new_tokens=5, clip_rerank=4, num_return_sequences=4, do_sample=True)
    for outs in sampled:
        scores = [out["clip_score"] for out in outs]
        assert len(outs) == 4 and scores == sorted(scores, reverse=True)
    # num_beams above K: CLIP chooses among the K best beams
    wide = captioner(images[0], max_new_tokens=5, num_beams=4, clip_rerank=2, num_return_sequences=2)
    ranked = clip_ranked_candidates(model, processor, images[:1], candidates=4)[0]
    pixel_values = processor(images=images[:1], return_tensors="pt")["pixel_values"]
    two_best = processor.batch_decode(
        model.generate(pixel_values=pixel_values, max_new_tokens=5, num_beams=4, num_return_sequences=2)
    )
    assert sorted(out["generated_text"] for out in wide) == sorted(two_best)
    assert wide[0]["clip_score"] == pytest.approx(max(s for t, s in ranked if t in two_best), abs=1e-5)


def test_clip_rerank_order_puts_the_decoders_first_near_best_candidate_first():
    scores = torch.tensor([[0.30, 0.32, 0.20, 0.315], [0.10, 0.10, 0.40, 0.05]])
    # tolerance 0: CLIP's order, ties to the decoder's earlier candidate
    assert clip_rerank_order(scores).tolist() == [[1, 3, 0, 2], [2, 0, 1, 3]]
    # within 0.01 of the best: candidates 1 and 3, in the decoder's order; then the rest by score
    assert clip_rerank_order(scores, 0.01).tolist() == [[1, 3, 0, 2], [2, 0, 1, 3]]
    assert clip_rerank_order(scores, 0.021).tolist() == [[0, 1, 3, 2], [2, 0, 1, 3]]
    assert clip_rerank_order(scores, 2.0).tolist() == [
        [0, 1, 2, 3],
        [0, 1, 2, 3],
    ]  # all near: the decoder's order


def test_clip_rerank_tolerance_keeps_the_most_probable_beam_near_clips_best(model, processor, images):
    captioner = CapDecImageToTextPipeline(model=model, processor=processor)
    expected = clip_ranked_candidates(model, processor, images, candidates=4)
    beams = captioner(images, max_new_tokens=5, num_beams=4, num_return_sequences=4)
    # Any cosine lies within 2 of the best: every beam is near, and the kept one is beam search's own best.
    everything = captioner(images, max_new_tokens=5, clip_rerank=4, clip_rerank_tolerance=2.0)
    assert [outs[0]["generated_text"] for outs in everything] == [outs[0]["generated_text"] for outs in beams]
    assert any(
        ranked[0][0] != outs[0]["generated_text"] for ranked, outs in zip(expected, beams, strict=True)
    )
    # In between: the first beam within the tolerance of CLIP's best, with its own CLIP score.
    picks = {}
    for tolerance in (0.0, 0.015, 0.3):
        kept = captioner(images, max_new_tokens=5, clip_rerank=4, clip_rerank_tolerance=tolerance)
        picks[tolerance] = [outs[0]["generated_text"] for outs in kept]
        for outs, ranked, by_beam in zip(kept, expected, beams, strict=True):
            score = dict(ranked)
            best = max(score.values())
            first_near = next(
                out["generated_text"] for out in by_beam if score[out["generated_text"]] >= best - tolerance
            )
            assert outs[0]["generated_text"] == first_near
            assert outs[0]["clip_score"] == pytest.approx(score[first_near], abs=1e-5)
    assert picks[0.0] == [ranked[0][0] for ranked in expected] != picks[0.3]  # CLIP's best; then not


@pytest.mark.parametrize(
    "options, message",
    [
        (
            {"clip_rerank_tolerance": 0.01},
            "clip_rerank_tolerance applies to clip_rerank's candidates: give clip_rerank too",
        ),
        ({"clip_rerank": 2, "clip_rerank_tolerance": -0.1}, "a number >= 0; got -0.1"),
        ({"clip_rerank": 2, "clip_rerank_tolerance": "0.1"}, "a number >= 0; got '0.1'"),
        (
            {"clip_rerank": 1},
            "clip_rerank is the number of candidates CLIP chooses from, an integer >= 2; got 1",
        ),
        ({"clip_rerank": True}, "an integer >= 2; got True"),
        ({"clip_rerank": "5"}, "an integer >= 2; got '5'"),
        (
            {"clip_rerank": 4, "num_beams": 2},
            "clip_rerank=4 needs 4 candidates, but beam search with num_beams=2",
        ),
        (
            {"clip_rerank": 2, "num_return_sequences": 3},
            "num_return_sequences=3 asks for more captions than the 2",
        ),
    ],
)
def test_clip_rerank_refuses_settings_that_cannot_give_its_candidates(
    model, processor, images, options, message
):
    captioner = CapDecImageToTextPipeline(model=model, processor=processor)
    with pytest.raises(ValueError, match=re.escape(message)):
        captioner(images[0], max_new_tokens=3, **options)


def test_clip_scores_checks_its_inputs(model, processor, images):
    pixel_values = processor(images=images[:2], return_tensors="pt")["pixel_values"]
    clip_inputs = processor.clip_tokenizer(["a", "b", "c"], padding=True, return_tensors="pt")
    with pytest.raises(ValueError, match="got 3 captions for 2 images: give the same number of candidates"):
        model.clip_scores(clip_inputs["input_ids"], clip_inputs["attention_mask"], pixel_values=pixel_values)
    with pytest.raises(ValueError, match="exactly one of pixel_values or image_embeds"):
        model.clip_scores(clip_inputs["input_ids"], clip_inputs["attention_mask"])
    embeds = model.get_image_embeds(pixel_values[:1], normalize=False)
    scores = model.clip_scores(clip_inputs["input_ids"], clip_inputs["attention_mask"], image_embeds=embeds)
    assert scores.shape == (1, 3)
    assert scores == pytest.approx(
        model.clip_scores(
            clip_inputs["input_ids"], clip_inputs["attention_mask"], pixel_values=pixel_values[:1]
        )
    )
