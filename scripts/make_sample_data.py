"""Write the bundled sample dataset (pricer/sample_data/*.jsonl).

The items imitate the course's pricer-data (the same prompt, `Price is $N.00` ending and price
range) but the price is a
function of the text -- category, pack size and brand tier -- so a tiny model can
learn it in a CPU demo and a falling loss means something.

    python scripts/make_sample_data.py
"""

import json
import random
from pathlib import Path

PROMPT = "How much does this cost to the nearest dollar?\n\n"
OUT_DIR = Path(__file__).resolve().parents[1] / "pricer" / "sample_data"

# category -> (base price in dollars, nouns, materials)
CATEGORIES = {
    "Phone Case": (12, ["phone case", "protective cover"], ["silicone", "TPU", "leather"]),
    "USB Cable": (8, ["USB-C cable", "charging cord"], ["braided nylon", "PVC"]),
    "Desk Lamp": (35, ["LED desk lamp", "reading light"], ["aluminum", "ABS plastic"]),
    "Office Chair": (150, ["ergonomic office chair", "task chair"], ["mesh", "faux leather"]),
    "Coffee Maker": (80, ["drip coffee maker", "coffee machine"], ["stainless steel", "plastic"]),
    "Blender": (60, ["countertop blender", "smoothie blender"], ["glass", "BPA-free plastic"]),
    "Headphones": (45, ["wireless headphones", "over-ear headset"], ["plastic", "memory foam"]),
    "Car Battery": (120, ["car battery", "AGM battery"], ["lead acid", "AGM"]),
    "Brake Pads": (40, ["ceramic brake pads", "brake pad set"], ["ceramic", "semi-metallic"]),
    "Garden Hose": (30, ["garden hose", "expandable hose"], ["rubber", "latex"]),
    "Power Drill": (90, ["cordless drill", "drill driver"], ["metal", "composite"]),
    "Yoga Mat": (22, ["yoga mat", "exercise mat"], ["TPE", "natural rubber"]),
    "Water Bottle": (15, ["insulated water bottle", "sports bottle"], ["stainless steel", "Tritan"]),
    "Backpack": (50, ["laptop backpack", "travel backpack"], ["nylon", "polyester"]),
    "Monitor": (200, ["computer monitor", "IPS display"], ["plastic", "aluminum"]),
    "Keyboard": (55, ["mechanical keyboard", "gaming keyboard"], ["aluminum", "ABS"]),
    "Vacuum": (180, ["cordless vacuum", "stick vacuum"], ["plastic", "metal"]),
    "Guitar Strings": (10, ["guitar strings", "string set"], ["nickel", "bronze"]),
    "Printer Ink": (25, ["ink cartridge", "toner cartridge"], ["plastic"]),
    "Air Purifier": (130, ["HEPA air purifier", "room air cleaner"], ["plastic", "metal"]),
}
TIERS = {"Basics": 1.0, "Everyday": 1.5, "Pro": 2.0, "Premium": 3.0}
BRANDS = {
    "Basics": ["Valuco", "Simplex"],
    "Everyday": ["Homeline", "Brightway"],
    "Pro": ["Corvex", "Titanor"],
    "Premium": ["Aurelia", "Stratos"],
}
PACKS = {1: 1.0, 2: 1.8}
COLORS = ["black", "white", "gray", "blue", "red", "green", "silver"]
FEATURES = [
    "easy to install",
    "compact design",
    "long lasting",
    "one year warranty",
    "lightweight",
    "durable build",
    "easy to clean",
    "ships in recyclable packaging",
]


def make_item(rng: random.Random) -> dict:
    """One item whose price follows its category, brand tier and pack size."""
    category = rng.choice(list(CATEGORIES))
    base, nouns, materials = CATEGORIES[category]
    tier = rng.choice(list(TIERS))
    brand = rng.choice(BRANDS[tier])
    pack = rng.choice(list(PACKS))
    dollars = min(999, round(base * TIERS[tier] * PACKS[pack]))
    price = dollars - 0.01 if dollars > 1 else 0.99  # 23.99 rounds to the 24 in the text
    title = f"{brand} {tier} {rng.choice(nouns).title()}, {rng.choice(COLORS).title()}"
    if pack > 1:
        title += f", Pack of {pack}"
    details = "\n".join(
        [
            f"Category: {category}. Brand: {brand} ({tier} line). Material: {rng.choice(materials)}.",
            f"Features: {', '.join(rng.sample(FEATURES, 3))}.",
            f"Item weight: {rng.randint(1, 90) / 10} pounds. Units in package: {pack}.",
        ]
    )
    text = f"{PROMPT}{title}\n{details}\n\nPrice is ${round(price)}.00"
    return {"text": text, "price": price}


def main(n_train: int = 2000, n_test: int = 300, seed: int = 0) -> None:
    rng = random.Random(seed)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for split, n in (("train", n_train), ("test", n_test)):
        with open(OUT_DIR / f"{split}.jsonl", "w") as f:
            for _ in range(n):
                item = make_item(rng)
                if split == "test":  # the course's test items stop right after "Price is $"
                    item["text"] = item["text"][: item["text"].index("Price is $") + len("Price is $")]
                f.write(json.dumps(item) + "\n")
    print(f"wrote {n_train} train and {n_test} test items to {OUT_DIR}")


if __name__ == "__main__":
    main()
