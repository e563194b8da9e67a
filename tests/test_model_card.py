"""The model card a run writes: front matter read as the Hub reads it, and sections that describe this run."""

from huggingface_hub import ModelCard

from modeling_capdec.training.arguments import CapDecTrainingArguments
from modeling_capdec.training.model_card import MODEL_CARD_TEMPLATE, model_card_fields, render_model_card


def card_for(model, tmp_path, **run) -> ModelCard:
    args = CapDecTrainingArguments(output_dir=str(tmp_path / "capdec-run"), report_to=[], use_cpu=True)
    facts = dict(
        clip_model="openai/clip-vit-base-patch32", decoder_model="gpt2", mode="text", corpus="captions.jsonl",
        cleaning_summary="3 rows", corpus_size=3, trained_steps=1, trained_epochs=1.0,
    )  # fmt: skip
    fields = model_card_fields(model.config, args, **{**facts, **run})
    return ModelCard(render_model_card(MODEL_CARD_TEMPLATE.read_text(), fields))


def test_front_matter_names_license_dataset_bases_and_results(model, tmp_path):
    card = card_for(
        model, tmp_path, hub_dataset="yerevann/coco-karpathy", corpus="yerevann/coco-karpathy", license="mit",
        eval_set="karpathy_test.json", metrics={"eval_CIDEr": 0.9126, "eval_BLEU-4": 0.25},
    )  # fmt: skip
    data = card.data.to_dict()
    assert data["license"] == "mit" and data["datasets"] == ["yerevann/coco-karpathy"]
    assert data["base_model"] == ["openai/clip-vit-base-patch32", "gpt2"]
    assert (data["pipeline_tag"], data["library_name"]) == ("image-to-text", "transformers")
    (entry,) = data["model-index"]
    assert entry["name"] == "capdec-run"
    metrics = {m["type"]: m["value"] for result in entry["results"] for m in result["metrics"]}
    assert metrics == {"bleu-4": 25.0, "cider": 91.3}
    assert "| 25.0 | 91.3 |" in card.text


def test_local_corpus_and_models_leave_hub_fields_out(model, tmp_path):
    card = card_for(model, tmp_path, clip_model=str(tmp_path), decoder_model=str(tmp_path))
    data = card.data.to_dict()
    assert "datasets" not in data and "base_model" not in data and "model-index" not in data
    assert "No evaluation was run" in card.text


def test_limitations_and_bias_describe_this_run(model, tmp_path):
    vit = card_for(model, tmp_path).text
    assert "CLIP ViT-B/32 (`openai/clip-vit-base-patch32`) stands in for the paper's CLIP RN50x4" in vit
    assert "`captions.jsonl`" in vit.split("## Bias")[1] and "COCO" not in vit.split("## Bias")[1]
    large = card_for(
        model, tmp_path, clip_model="openai/clip-vit-large-patch14", corpus="data/coco_train.jsonl"
    )
    limitations, bias = large.text.split("## Limitations")[1].split("## Bias")
    assert "ViT-L/14" in limitations and "ViT-B/32" not in limitations
    assert "COCO captions describe men far more often" in bias and "`data/coco_train.jsonl`" in bias
    supervised = card_for(model, tmp_path, mode="supervised").text
    assert "Text-only training leaves a gap" not in supervised


def test_a_corpus_of_several_files_is_named_file_by_file(model, tmp_path):
    card = card_for(model, tmp_path, corpus=["shards/*.jsonl", "extra.jsonl"])
    assert "shards/*.jsonl, extra.jsonl" in card.text and "['shards" not in card.text


def test_a_continued_run_names_the_model_it_started_from(model, tmp_path):
    continued = card_for(model, tmp_path, mode="supervised", init_from="outputs/capdec-text").text
    assert (
        "Training: supervised on CLIP image embeddings (the ClipCap reference), continuing from the trained "
        "CapDec model `outputs/capdec-text`." in continued
    )
    fresh = card_for(model, tmp_path).text
    assert "Training: text only (CapDec): the decoder never saw an image during training." in fresh
    assert "continuing from" not in fresh
