"""A web demo: caption uploaded or pasted images with a saved CapDec folder (Gradio, `pip install "capdec[app]"`).

    capdec-app                                   # the model `make demo` trained (demo_outputs/runs/eps_auto)
    capdec-app --model outputs/capdec-coco       # any saved folder: plain, merged LoRA, or a LoRA adapter
    python -m demo.app --model DIR --port 7861   # the same, from the checkout

The page has one tab for a single image (upload, drag or paste from the clipboard) and one for a batch of files;
beams, sampling (top-p, temperature, seed) and the caption length are set beside them. Captions come from
`pipeline("image-to-text", model=DIR, trust_remote_code=True)`, as a user of the saved folder would get them.
The server listens on a loopback address only (127.0.0.1 by default): open the printed URL on this machine.
"""

import argparse
import ipaddress
from collections.abc import Sequence
from pathlib import Path
from typing import Any

# The ε = auto run of `make demo` (demo/run_demo.py names its folders eps_<ε>; under --full, with three seeds,
# eps_auto_seed0 and so on).
DEFAULT_MODEL = Path("demo_outputs") / "runs" / "eps_auto"
LOOPBACK_NAMES = ("localhost",)
# Decoding defaults: greedy, at most the original code's 67 tokens.
MAX_NEW_TOKENS = 67


def check_model_folder(model: str | Path) -> Path:
    """The model folder, or a `FileNotFoundError` that says how to get one (`make demo` trains the default; after
    `make demo-full`, which trains three seeds, the default is the first seed's model).

    Example:

    ```python
    >>> check_model_folder("no/such/folder")
    Traceback (most recent call last):
    ...
    FileNotFoundError: No saved CapDec model at no/such/folder (no config.json or adapter_config.json). ...
    ```
    """
    folder = Path(model)
    seed0 = DEFAULT_MODEL.with_name(DEFAULT_MODEL.name + "_seed0")
    if folder == DEFAULT_MODEL and not folder.exists() and (seed0 / "config.json").is_file():
        return seed0  # `make demo-full` trained three seeds: the first one's model
    if (folder / "config.json").is_file() or (folder / "adapter_config.json").is_file():
        return folder
    hint = (
        f"Run `make demo` first: it trains the demo's model into {DEFAULT_MODEL}. Or pass --model DIR, a folder "
        "saved by train_capdec.py."
        if folder == DEFAULT_MODEL
        else "Pass --model DIR, a folder saved by train_capdec.py (or model.save_pretrained + processor.save_pretrained)."
    )
    raise FileNotFoundError(
        f"No saved CapDec model at {folder} (no config.json or adapter_config.json). {hint}"
    )


def check_loopback(host: str) -> str:
    """`host` if it is a loopback address (127.0.0.0/8, ::1, localhost); the demo never listens on a network.

    Example:

    ```python
    >>> check_loopback("127.0.0.1")
    '127.0.0.1'
    >>> check_loopback("0.0.0.0")
    Traceback (most recent call last):
    ...
    ValueError: --host 0.0.0.0 is not a loopback address: the demo only listens on this machine (127.0.0.1, ::1).
    ```
    """
    try:
        loopback = host in LOOPBACK_NAMES or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"--host {host} is not a loopback address: the demo only listens on this machine (127.0.0.1, ::1)."
        )
    return host


def load_captioner(model: str | Path, device: str | None = None) -> Any:
    """The image-to-text pipeline of a saved folder (checked first with `check_model_folder`).

    Example:

    ```python
    >>> captioner = load_captioner("demo_outputs/runs/eps_auto")  # doctest: +SKIP
    ```
    """
    from transformers import pipeline

    folder = check_model_folder(model)
    return pipeline("image-to-text", model=str(folder), trust_remote_code=True, device=device)


def decoding_options(
    num_beams: int = 1,
    do_sample: bool = False,
    top_p: float = 1.0,
    temperature: float = 1.0,
    max_new_tokens: int = MAX_NEW_TOKENS,
    clip_rerank: bool = False,
) -> dict[str, Any]:
    """`generate` keyword arguments from the page's controls (sampling ones only when sampling). With
    `clip_rerank`, the beams (or samples) are the candidates CLIP chooses from: `clip_rerank` = `num_beams`, which
    must then be at least 2; `caption_files` hands it to the pipeline.

    Example:

    ```python
    >>> decoding_options(num_beams=3, max_new_tokens=20)
    {'num_beams': 3, 'max_new_tokens': 20, 'do_sample': False}
    >>> decoding_options(do_sample=True, top_p=0.9)
    {'num_beams': 1, 'max_new_tokens': 67, 'do_sample': True, 'top_p': 0.9, 'temperature': 1.0}
    >>> decoding_options(num_beams=5, clip_rerank=True)
    {'num_beams': 5, 'max_new_tokens': 67, 'do_sample': False, 'clip_rerank': 5}
    ```
    """
    options: dict[str, Any] = {"num_beams": int(num_beams), "max_new_tokens": int(max_new_tokens)}
    options["do_sample"] = bool(do_sample)
    if do_sample:
        options.update(top_p=float(top_p), temperature=float(temperature))
    if clip_rerank:
        if int(num_beams) < 2:
            raise ValueError("CLIP reranking chooses among the beams: set Beams to 2 or more.")
        options["clip_rerank"] = int(num_beams)
    return options


def caption_files(captioner: Any, files: Sequence[str], seed: int | None = None, **options: Any) -> list[str]:
    """One caption per image file (paths), in order, with `decoding_options`; `seed` makes sampling repeatable.

    Example:

    ```python
    >>> caption_files(captioner, ["a.jpg", "b.png"], **decoding_options(num_beams=3))  # doctest: +SKIP
    ['a dog running on the beach', 'a red square above a blue circle']
    ```
    """
    if not files:
        return []
    if seed is not None:
        from transformers import set_seed

        set_seed(int(seed))
    options = dict(options)
    # A pipeline option, not a generate one.
    rerank = {"clip_rerank": options.pop("clip_rerank")} if options.get("clip_rerank") else {}
    outputs = captioner(list(files), batch_size=8, generate_kwargs=options, **rerank)
    return [output[0]["generated_text"] for output in outputs]


def build_app(captioner: Any, model_name: str) -> Any:
    """The Gradio page (a `gr.Blocks`) around `captioner`.

    Example:

    ```python
    >>> build_app(load_captioner("demo_outputs/runs/eps_auto"), "eps_auto").launch()  # doctest: +SKIP
    ```
    """
    import gradio as gr

    def controls_to_options(num_beams, do_sample, top_p, temperature, max_new_tokens, clip_rerank):
        try:
            return decoding_options(num_beams, do_sample, top_p, temperature, max_new_tokens, clip_rerank)
        except ValueError as error:
            raise gr.Error(str(error)) from error

    def caption_one(image_path, seed, *controls):
        if not image_path:
            raise gr.Error("Upload or paste an image first.")
        return caption_files(captioner, [image_path], seed, **controls_to_options(*controls))[0]

    def caption_batch(files, seed, *controls):
        paths = [getattr(file, "name", file) for file in files or []]
        if not paths:
            raise gr.Error("Choose one or more image files first.")
        captions = caption_files(captioner, paths, seed, **controls_to_options(*controls))
        return [[Path(path).name, caption] for path, caption in zip(paths, captions, strict=True)]

    with gr.Blocks(title="CapDec captioning", analytics_enabled=False) as app:
        gr.Markdown(f"# CapDec captioning\nModel: `{model_name}`")
        with gr.Row():
            num_beams = gr.Slider(1, 10, value=1, step=1, label="Beams", elem_id="num-beams")
            max_new_tokens = gr.Slider(1, MAX_NEW_TOKENS, value=30, step=1, label="Max new tokens")
            seed = gr.Number(value=0, precision=0, label="Seed (sampling)")
        with gr.Row():
            do_sample = gr.Checkbox(value=False, label="Sampling", elem_id="do-sample")
            top_p = gr.Slider(0.05, 1.0, value=0.9, step=0.05, label="Top-p")
            temperature = gr.Slider(0.1, 2.0, value=1.0, step=0.1, label="Temperature")
            clip_rerank = gr.Checkbox(
                value=False, label="CLIP chooses among the beams (reranking)", elem_id="clip-rerank"
            )
        controls = [num_beams, do_sample, top_p, temperature, max_new_tokens, clip_rerank]
        with gr.Tab("One image"):
            image = gr.Image(
                type="filepath",
                sources=["upload", "clipboard"],
                label="Image (upload, drop or paste)",
                elem_id="image",
            )
            button = gr.Button("Caption", variant="primary", elem_id="caption-button")
            caption = gr.Textbox(label="Caption", interactive=False, elem_id="caption")
            button.click(caption_one, [image, seed, *controls], caption)
        with gr.Tab("Batch"):
            files = gr.File(
                file_count="multiple", file_types=["image"], label="Images", elem_id="batch-files"
            )
            batch_button = gr.Button("Caption all", variant="primary", elem_id="batch-button")
            table = gr.Dataframe(headers=["file", "caption"], label="Captions", elem_id="batch-captions")
            batch_button.click(caption_batch, [files, seed, *controls], table)
    return app


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="capdec-app", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model",
        default=str(DEFAULT_MODEL),
        help=f"Saved CapDec folder (default: {DEFAULT_MODEL}, from `make demo`).",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="Loopback address to listen on (default 127.0.0.1)."
    )
    parser.add_argument("--port", type=int, default=7860, help="Port (default 7860).")
    parser.add_argument(
        "--device", default=None, help="cpu, cuda, cuda:1, ... (default: transformers' choice)."
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> None:
    """`capdec-app`: check the arguments, load the model, serve the page until interrupted."""
    args = parse_args(argv)
    host = check_loopback(args.host)
    model = check_model_folder(args.model)
    captioner = load_captioner(model, args.device)
    import gradio as gr

    # System fonts: the default theme fetches web fonts, and the demo must work without a network.
    theme = gr.themes.Default(font=["system-ui", "sans-serif"], font_mono=["ui-monospace", "monospace"])
    app = build_app(captioner, model.name)
    print(f"Serving {model} on http://{host}:{args.port}", flush=True)
    app.launch(server_name=host, server_port=args.port, share=False, ssr_mode=False, theme=theme, quiet=True)


if __name__ == "__main__":
    main()
