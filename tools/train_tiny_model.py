"""Train the bundled tiny open_clip model on generated scenes and save its fp16 weights.

    python tools/train_tiny_model.py [--steps 400] [--out openclip_ascend/assets/openclip-ascend-tiny.safetensors]

It is trained on scenes drawn with other seeds than the demo sample set, then checked on that
held-out sample (the demo's own data) through PyTorch: recall@5 must reach 0.9 both ways.
"""

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from openclip_ascend.data.sample import random_scenes  # noqa: E402
from openclip_ascend.data.transforms import ImagePreprocessor, Tokenizer, preprocess_config  # noqa: E402
from openclip_ascend.evaluate.metrics import retrieval_metrics  # noqa: E402
from openclip_ascend.files import atomic_path  # noqa: E402
from openclip_ascend.model.loading import TINY_MODEL, TINY_WEIGHTS, load_model  # noqa: E402

DEMO_SEED = 1234  # openclip_ascend.data.sample.write_sample_dir's default: never trained on


def encode_scenes(scenes, preprocessor, tokenizer):
    images = torch.from_numpy(np.stack([preprocessor(scene.render()) for scene in tqdm(scenes, desc="render")]))
    texts = torch.from_numpy(tokenizer([c for scene in scenes for c in scene.captions()]))
    return images, texts.view(len(scenes), -1, texts.shape[-1])


def evaluate(model, images, texts):
    with torch.no_grad():
        image_embeds = model.encode_image(images, normalize=True).numpy()
        text_embeds = model.encode_text(texts.flatten(0, 1), normalize=True).numpy()
    per_image = texts.shape[1]
    return retrieval_metrics(image_embeds, text_embeds, np.repeat(np.arange(len(images)), per_image), ks=(1, 5))


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train-images", type=int, default=2000)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--lr", type=float, default=2e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(TINY_WEIGHTS))
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model = load_model(TINY_MODEL).train()
    preprocessor = ImagePreprocessor(preprocess_config(model))
    tokenizer = Tokenizer(TINY_MODEL)
    train_images, train_texts = encode_scenes(random_scenes(args.train_images, args.seed), preprocessor, tokenizer)
    eval_images, eval_texts = encode_scenes(random_scenes(100, DEMO_SEED), preprocessor, tokenizer)

    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.05)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=args.lr, total_steps=args.steps, pct_start=0.1)
    generator = torch.Generator().manual_seed(args.seed)
    start = time.time()
    for _ in (bar := tqdm(range(args.steps), desc="train")):
        idx = torch.randperm(len(train_images), generator=generator)[: args.batch_size]
        which = torch.randint(train_texts.shape[1], (len(idx),), generator=generator)
        image_features, text_features, logit_scale = model(train_images[idx], train_texts[idx, which])
        logits = logit_scale * image_features @ text_features.T
        labels = torch.arange(len(idx))
        loss = (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        bar.set_postfix(loss=f"{loss.item():.3f}")
    train_seconds = round(time.time() - start, 1)
    # evaluate what is shipped: the fp16-rounded weights
    state = {name: tensor.detach().half().contiguous() for name, tensor in model.state_dict().items()}
    model.load_state_dict({name: tensor.float() for name, tensor in state.items()})
    metrics = evaluate(model.eval(), eval_images, eval_texts)
    print(json.dumps({**metrics, "train_seconds": train_seconds}, indent=2))

    from safetensors.torch import save_file

    with atomic_path(args.out) as tmp:
        save_file(state, str(tmp))
    print(f"saved {args.out} ({Path(args.out).stat().st_size / 1e6:.1f} MB)")


if __name__ == "__main__":
    main()
