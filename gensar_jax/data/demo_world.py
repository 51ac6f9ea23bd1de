"""The embedded demo world: a synthetic Amazon category in the McAuley layout.

No real data ships with the project, so the demo config and many tests run on a small
generated category written exactly like the McAuley files (docs/design.md §1.1):

  reviews_<category>_5.json.gz  one JSON object a line: reviewerID, asin, reviewText,
                                overall, unixReviewTime; grouped by user, time order.
  meta_<category>.json.gz       2014 style: one `repr(dict)` a line (single quotes):
                                asin, title, description (missing on a few items),
                                categories (list of paths, each [category, department,
                                subcategory, leaf]).

Planted signals (see `World` for the ground truth):
  * Category interest: every user prefers 3 leaves (the second often in the first's
    department) and buys mostly there.
  * Brand taste: every user has one favourite brand per department; inside a leaf an
    item of that brand is `BRAND_BOOST` times likelier. Brands are words of the title,
    so a search model must read item text to use it.
  * Co-purchase chains across departments: a random 60% of items are linked into
    chains A -> B -> C whose links always cross departments. Right after buying A, a
    user buys partner(A) with probability `FOLLOW_PROB` (if not bought yet). Nothing in
    the text relates A and B: only collaborative signal reveals it.
  * 5-core: every user and every item has at least 5 reviews (rare items are topped
    up by users who prefer their leaf); no user reviews an item twice.
  * Review text repeats the item's brand, attribute, leaf, subcategory and department
    words, so the query builder (words seen >= 5 times in reviews) keeps them.
Deterministic for a seed: same arguments give byte-identical files.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import gzip
import pathlib
import re

from absl import logging
import numpy as np

from gensar_jax import errors
from gensar_jax.data import raw

# Generation knobs (module constants so tests and docs can quote them).
LEAVES_PER_USER = 3  # Preferred leaves per user.
LEAF_WEIGHTS = (0.5, 0.3, 0.2)  # Purchase share of the 1st, 2nd, 3rd preferred leaf.
SAME_DEPARTMENT_PROB = 0.5  # The 2nd preferred leaf is in the 1st one's department.
BRAND_BOOST = 6.0  # Weight of the favourite brand's items inside a leaf (others 1).
CHAINED_FRACTION = 0.6  # Items placed in co-purchase chains.
CHAIN_LENGTH = 3  # Items per chain (A -> B -> C).
FOLLOW_PROB = 0.6  # P(next purchase = partner(last purchase)) when not yet bought.
EXPLORE_PROB = 0.1  # P(a purchase ignores interests: any item by popularity).
MIN_REVIEWS = 5  # The 5-core threshold (users and items).
ITEMS_PER_LEAF = 8  # Target catalog size per leaf (sets how many leaves are used).
MIN_LEAVES = 6  # Fewest leaves used (small catalogs).
REVIEWS_PER_ITEM = 20  # Target mean reviews per item (sets the mean user length).
MIN_USERS, MIN_ITEMS = 20, 30  # Smallest worlds accepted.
EMPTY_DESCRIPTION_PROB = 0.08  # Items whose description is "".
MISSING_DESCRIPTION_PROB = 0.03  # Items whose meta line has no description key.
HTML_DESCRIPTION_PROB = 0.06  # Items whose description is HTML.
SECOND_PATH_PROB = 0.1  # Items also listed under a leaf of a sibling subcategory.
ROOT_PATH_PROB = 0.05  # Items with an extra one-level path [category] (no query).
EQUAL_TIME_PROB = 0.15  # A review on the same day as the previous one (not partners).
FIRST_DAY = datetime.date(2009, 1, 1)  # Earliest first review.
START_SPAN_DAYS = 4 * 365  # Users start uniformly within this many days.
_DAY = 86400

# department -> (brands, {subcategory -> (attributes, features, variants, {leaf -> noun})}).
TREE = {
    "Office Supplies": (
        ("Acme", "Penwright", "Scriptora", "Deskwell", "Paperloft"), {
            "Writing Instruments": (
                ("Blue", "Black", "Red", "Fine Point", "Retractable"),
                ("smooth ink flow", "a soft rubber grip", "quick drying ink that never smears"),
                ("12 Pack", "24 Pack", "6 Pack", "36 Count"),
                {"Gel Pens": "Gel Pen", "Mechanical Pencils": "Mechanical Pencil",
                 "Highlighters": "Highlighter"}),
            "Paper Products": (
                ("Ruled", "Grid", "Blank", "Recycled", "Pastel"),
                ("thick acid free sheets", "a sturdy cover", "pages that tear out cleanly"),
                ("3 Pack", "5 Pack", "100 Sheets", "Letter Size"),
                {"Spiral Notebooks": "Spiral Notebook", "Sticky Notes": "Sticky Note Pad",
                 "Index Cards": "Index Card Set"}),
            "Desk Accessories": (
                ("Mesh", "Bamboo", "Chrome", "Clear", "Matte Black"),
                ("a weighted non slip base", "sturdy all metal construction",
                 "a compact footprint for small desks"),
                ("Single", "2 Pack", "Large", "Small"),
                {"Staplers": "Stapler", "Desk Organizers": "Desk Organizer",
                 "Tape Dispensers": "Tape Dispenser"}),
        }),
    "Electronics": (
        ("Voltix", "Sonora", "Keyflux", "Amperly", "Nimbus"), {
            "Audio": (
                ("Wireless", "Noise Cancelling", "Bluetooth", "Compact", "Waterproof"),
                ("deep bass and clear highs", "a battery that lasts all day",
                 "a built in microphone for calls"),
                ("Black", "White", "Navy", "Gray"),
                {"Headphones": "Over Ear Headphones", "Portable Speakers": "Portable Speaker",
                 "Earbuds": "Earbuds"}),
            "Computer Accessories": (
                ("Ergonomic", "Backlit", "Wireless", "Slim", "USB C"),
                ("quiet responsive keys", "plug and play setup with no drivers",
                 "a long range receiver"),
                ("Black", "Silver", "Full Size", "Travel Size"),
                {"Keyboards": "Keyboard", "Computer Mice": "Mouse", "USB Hubs": "USB Hub"}),
            "Power": (
                ("Fast Charging", "Rechargeable", "Dual Port", "Compact", "Long Lasting"),
                ("overcharge protection", "enough capacity for a weekend",
                 "a folding plug for travel"),
                ("1 Pack", "2 Pack", "4 Pack", "8 Pack"),
                {"Wall Chargers": "Wall Charger", "Power Banks": "Power Bank",
                 "Rechargeable Batteries": "AA Battery Set"}),
        }),
    "Kitchen & Dining": (
        ("Copperleaf", "Hearthstone", "Brewhaus", "Larderly", "Simmerwell"), {
            "Cookware": (
                ("Nonstick", "Stainless Steel", "Cast Iron", "Ceramic", "Induction Ready"),
                ("even heating without hot spots", "a riveted stay cool handle",
                 "an oven safe body"),
                ("8 Inch", "10 Inch", "12 Inch", "3 Quart"),
                {"Frying Pans": "Frying Pan", "Saucepans": "Saucepan", "Stock Pots": "Stock Pot"}),
            "Coffee & Tea": (
                ("Insulated", "Glass", "Stoneware", "Matte", "Double Wall"),
                ("a comfortable handle", "a drip free spout", "a finish that resists stains"),
                ("12 Ounce", "16 Ounce", "Set of 2", "Set of 4"),
                {"Coffee Mugs": "Coffee Mug", "Tea Kettles": "Tea Kettle",
                 "French Presses": "French Press"}),
            "Food Storage": (
                ("BPA Free", "Glass", "Stackable", "Leakproof", "Airtight"),
                ("snap locking lids", "a dishwasher safe body",
                 "clear walls to see what is inside"),
                ("Set of 5", "Set of 10", "24 Ounce", "1 Liter"),
                {"Storage Containers": "Food Storage Container", "Water Bottles": "Water Bottle",
                 "Lunch Boxes": "Lunch Box"}),
        }),
    "Sports & Outdoors": (
        ("Trailmark", "Summitco", "Ridgeback", "Peakline", "Flexa"), {
            "Camping": (
                ("Lightweight", "Waterproof", "Compact", "Ultralight", "Four Season"),
                ("a quick pitch design", "a stuff sack that packs small",
                 "taped seams that keep the rain out"),
                ("1 Person", "2 Person", "4 Person", "Olive"),
                {"Tents": "Dome Tent", "Sleeping Bags": "Sleeping Bag",
                 "Camping Lanterns": "Camping Lantern"}),
            "Fitness": (
                ("Non Slip", "Adjustable", "Extra Thick", "Foam", "Neoprene"),
                ("a textured surface for grip", "a carry strap", "sweat resistant material"),
                ("Purple", "Black", "Pair", "Set of 3"),
                {"Yoga Mats": "Yoga Mat", "Dumbbells": "Dumbbell",
                 "Resistance Bands": "Resistance Band"}),
            "Cycling": (
                ("LED", "Reflective", "Heavy Duty", "Quick Release", "Aluminum"),
                ("tool free mounting", "a bright beam for night rides", "weather sealed parts"),
                ("Front", "Rear", "Medium", "Large"),
                {"Bike Lights": "Bike Light", "Bike Locks": "Bike Lock",
                 "Bike Helmets": "Bike Helmet"}),
        }),
    "Toys & Games": (
        ("Brightblock", "Puzzlewood", "Tinkerly", "Gamesmith", "Kidora"), {
            "Puzzles": (
                ("Wooden", "Landscape", "Animal", "Glow in the Dark", "Vintage"),
                ("pieces that lock firmly", "a poster for reference", "thick recycled board"),
                ("500 Pieces", "1000 Pieces", "Ages 8 and Up", "Family Size"),
                {"Jigsaw Puzzles": "Jigsaw Puzzle", "Brain Teasers": "Brain Teaser",
                 "3D Puzzles": "3D Puzzle"}),
            "Building Toys": (
                ("Magnetic", "Wooden", "Classic", "Colorful", "Starter"),
                ("pieces that are safe for small hands", "a storage bin",
                 "an idea booklet with builds"),
                ("50 Pieces", "100 Pieces", "Deluxe Set", "Travel Set"),
                {"Building Blocks": "Building Block Set", "Magnetic Tiles": "Magnetic Tile Set",
                 "Marble Runs": "Marble Run"}),
            "Board Games": (
                ("Family", "Strategy", "Cooperative", "Travel", "Party"),
                ("rules that take minutes to learn", "sturdy cards and tokens",
                 "games that last about half an hour"),
                ("2 to 4 Players", "2 to 6 Players", "Ages 10 and Up", "Deluxe Edition"),
                {"Card Games": "Card Game", "Strategy Board Games": "Strategy Board Game",
                 "Dice Games": "Dice Game"}),
        }),
}

_NUM_BRANDS = min(len(brands) for brands, _ in TREE.values())  # Brands per department.

_PRAISE = (
    "Great {nouns} for the price.",
    "I compared several {nouns} and this {brand} one is the best.",
    "The {attr} {noun} from {brand} works exactly as described.",
    "Very happy with these {nouns}, the {attr} design is great.",
    "One of the better {sub} I have bought, {feature} makes a difference.",
    "A solid pick in {dept}; I would buy {brand} {nouns} again.",
    "It has {feature} and the {attr} finish looks nice.",
    "My second {brand} purchase and still impressed with their {sub}.",
)
_MIXED = (
    "Decent {nouns} but not perfect.",
    "The {attr} {noun} is fine, but {feature} was oversold.",
    "Average {sub}; {brand} has made better {nouns}.",
    "It does the job for basic {dept} needs.",
)
_COMPLAINT = (
    "Disappointed with this {noun}.",
    "The {brand} {noun} did not hold up for long.",
    "Not worth it, I expected better {nouns} from {brand}.",
    "Returned it; there are better {sub} in {dept}.",
)
_RATING_P_FAVOURITE = (0.02, 0.03, 0.08, 0.27, 0.60)  # P(1..5 stars), favourite brand.
_RATING_P_OTHER = (0.06, 0.08, 0.16, 0.32, 0.38)  # P(1..5 stars), other items.


@dataclasses.dataclass(frozen=True)
class World:
  """A generated category with its ground truth, before it is written to files.

  Attributes:
    category: the category name (first level of every path, file name part).
    leaves: [L] (department, subcategory, leaf) names of the leaves in use.
    leaf_department: [L] int, department index of each leaf.
    departments: [D] department names (all of TREE, in order).
    asins: [N] str item ids.
    titles: [N] str.
    descriptions: [N] str, or None where the meta line has no description key.
    paths: [N] list of category paths (lists of str) of each item.
    item_leaf: [N] int, the leaf of each item's first path.
    item_brand: [N] int, brand index (into the department's brand list).
    item_attribute: [N] str, the attribute word(s) in the title.
    item_popularity: [N] float, base purchase weight.
    partner: [N] int, the co-purchase partner (-1 for none); always another department.
    user_ids: [U] str reviewer ids.
    user_leaves: [U, LEAVES_PER_USER] int, preferred leaves, most preferred first.
    user_brand: [U, D] int, favourite brand index per department.
    sequences: [U] int arrays, items reviewed in time order (no repeats).
    times: [U] int64 arrays, unixReviewTime of each review (non-decreasing).
    texts: [U] lists of str, reviewText of each review.
    ratings: [U] int arrays, overall (1..5) of each review.
  """

  category: str
  leaves: list[tuple[str, str, str]]
  leaf_department: np.ndarray
  departments: list[str]
  asins: list[str]
  titles: list[str]
  descriptions: list[str | None]
  paths: list[list[list[str]]]
  item_leaf: np.ndarray
  item_brand: np.ndarray
  item_attribute: list[str]
  item_popularity: np.ndarray
  partner: np.ndarray
  user_ids: list[str]
  user_leaves: np.ndarray
  user_brand: np.ndarray
  sequences: list[np.ndarray]
  times: list[np.ndarray]
  texts: list[list[str]]
  ratings: list[np.ndarray]

  @property
  def item_department(self) -> np.ndarray:
    """[N] int, department index of each item."""
    return self.leaf_department[self.item_leaf]

  def brand_name(self, item: int) -> str:
    """The brand word(s) of `item`, as in its title."""
    brands, _ = TREE[self.departments[self.item_department[item]]]
    return brands[self.item_brand[item]]


def check_sizes(num_users: int, num_items: int, category: str = "Demo") -> None:
  """Raises `errors.PipelineError` if a world of these sizes cannot be generated."""
  if not re.fullmatch(r"[A-Za-z0-9_]+", category):
    raise errors.PipelineError(
        f"demo category must be letters, digits or '_' (it names files), got {category!r}")
  if num_users < MIN_USERS or num_items < MIN_ITEMS:
    raise errors.PipelineError(
        f"demo world needs at least {MIN_USERS} users and {MIN_ITEMS} items, "
        f"got {num_users} users and {num_items} items")
  if num_users * 5 < num_items:
    raise errors.PipelineError(
        f"demo world needs at least one user per 5 items for a 5-core, "
        f"got {num_users} users for {num_items} items")


def _random_ids(rng: np.random.Generator, n: int, prefix: str, length: int) -> list[str]:
  """`n` distinct ids: `prefix` + uppercase letters/digits, `length` characters in all."""
  alphabet = np.array(list("ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
  ids: list[str] = []
  seen: set[str] = set()
  while len(ids) < n:
    draws = rng.integers(0, len(alphabet), size=(n, length - len(prefix)))
    for row in alphabet[draws]:
      s = prefix + "".join(row)
      if s not in seen and len(ids) < n:
        seen.add(s)
        ids.append(s)
  return ids


def _leaf_order() -> list[tuple[int, str, str, str]]:
  """All leaves as (department index, department, subcategory, leaf).

  Ordered round-robin over departments, then subcategories, so that any prefix (the
  leaves a small catalog uses) covers the departments evenly.
  """
  table = []
  for d, (dept, (_, subs)) in enumerate(TREE.items()):
    for s, (sub, (_, _, _, leaves)) in enumerate(subs.items()):
      for l, leaf in enumerate(leaves):
        table.append(((l, s, d), (d, dept, sub, leaf)))
  return [entry for _, entry in sorted(table)]


def _description(rng, brand, attr, noun, sub, features, html: bool) -> str:
  """A product description from the item's words (HTML markup when `html`)."""
  f = list(rng.permutation(features))
  intro = f"The {brand} {attr} {noun} is a dependable choice in {sub.lower()}."
  body = f"It features {f[0]} and {f[1]}."
  outro = f"{brand} stands behind it with a one year warranty."
  if html:
    items = "".join(f"<li>{x.capitalize()}</li>" for x in f)
    return (f"<p><b>{brand} {attr} {noun}</b></p><p>{intro} {body}</p><ul>{items}</ul>"
            f"<p>Satisfaction guaranteed &amp; free returns.</p>")
  return " ".join((intro, body, outro) if rng.random() < 0.5 else (intro, body))


def _build_catalog(rng: np.random.Generator, category: str, num_items: int) -> dict:
  """Leaves in use, items with text and paths, popularity and co-purchase partners."""
  order = _leaf_order()
  num_leaves = int(np.clip(num_items // ITEMS_PER_LEAF, MIN_LEAVES, len(order)))
  used = order[:num_leaves]
  # Leaf of every item: equal shares, the remainder to random leaves, then shuffled.
  counts = np.full(num_leaves, num_items // num_leaves)
  counts[rng.permutation(num_leaves)[: num_items % num_leaves]] += 1
  item_leaf = rng.permutation(np.repeat(np.arange(num_leaves), counts))

  titles, descriptions, paths, brands_of, attrs_of = [], [], [], [], []
  seen_titles: set[str] = set()
  brand_cursor = rng.integers(0, _NUM_BRANDS, size=num_leaves)
  for i in range(num_items):
    leaf = item_leaf[i]
    _, dept, sub, leaf_name = used[leaf]
    brands, subs = TREE[dept]
    attrs, features, variants, nouns = subs[sub]
    noun = nouns[leaf_name]
    b = int(brand_cursor[leaf] % len(brands))  # Brands cycle inside a leaf: balanced.
    brand_cursor[leaf] += 1
    attr = str(rng.choice(attrs))
    variant = str(rng.choice(variants))
    title = (f"{brands[b]} {attr} {noun}, {variant}" if rng.random() < 0.7
             else f"{brands[b]} {noun} - {attr}, {variant}")
    if title in seen_titles:  # A model number keeps titles unique.
      title += f" (Model {brands[b][:2].upper()}-{rng.integers(100, 1000)})"
    seen_titles.add(title)
    u = rng.random()
    if u < MISSING_DESCRIPTION_PROB:
      description = None
    elif u < MISSING_DESCRIPTION_PROB + EMPTY_DESCRIPTION_PROB:
      description = ""
    else:
      html = u > 1 - HTML_DESCRIPTION_PROB
      description = _description(rng, brands[b], attr, noun, sub, features, html)
    item_paths = [[category, dept, sub, leaf_name]]
    if rng.random() < SECOND_PATH_PROB:  # Cross-listed under a sibling subcategory.
      siblings = [k for k, e in enumerate(used) if e[1] == dept and e[2] != sub]
      if siblings:
        k = siblings[rng.integers(len(siblings))]
        item_paths.append([category, used[k][1], used[k][2], used[k][3]])
    if rng.random() < ROOT_PATH_PROB:
      item_paths.append([category])
    titles.append(title)
    descriptions.append(description)
    paths.append(item_paths)
    brands_of.append(b)
    attrs_of.append(attr)

  leaf_department = np.array([e[0] for e in used])
  item_dept = leaf_department[item_leaf]
  # Chains A -> B -> C over a random subset; consecutive links cross departments.
  partner = np.full(num_items, -1)
  num_chains = int(round(CHAINED_FRACTION * num_items)) // CHAIN_LENGTH
  pool = list(rng.permutation(num_items))
  for _ in range(num_chains):
    chain = [pool.pop()]
    while len(chain) < CHAIN_LENGTH:
      k = next((k for k in range(len(pool) - 1, -1, -1)
                if item_dept[pool[k]] != item_dept[chain[-1]]), None)
      if k is None:
        break
      chain.append(pool.pop(k))
    for a, b in zip(chain[:-1], chain[1:]):
      partner[a] = b
  return dict(
      leaves=[e[1:] for e in used], leaf_department=leaf_department,
      titles=titles, descriptions=descriptions, paths=paths, item_leaf=item_leaf,
      item_brand=np.array(brands_of), item_attribute=attrs_of,
      item_popularity=rng.lognormal(0.0, 0.6, size=num_items), partner=partner)


def _user_preferences(rng, num_users, leaf_department, num_departments):
  """Preferred leaves [U, 3] (2nd often in the 1st's department) and brands [U, D]."""
  num_leaves = len(leaf_department)
  user_leaves = np.zeros((num_users, LEAVES_PER_USER), dtype=np.int64)
  for u in range(num_users):
    first = rng.integers(num_leaves)
    chosen = [first]
    same = [l for l in np.flatnonzero(leaf_department == leaf_department[first]) if l != first]
    if same and rng.random() < SAME_DEPARTMENT_PROB:
      chosen.append(same[rng.integers(len(same))])
    while len(chosen) < LEAVES_PER_USER:
      l = rng.integers(num_leaves)
      if l not in chosen:
        chosen.append(l)
    user_leaves[u] = chosen
  user_brand = rng.integers(0, _NUM_BRANDS, size=(num_users, num_departments))
  return user_leaves, user_brand


def _sequences(rng, cat, user_leaves, user_brand, num_items) -> list[list[int]]:
  """Each user's purchases in order, from interests, brand taste and partner chains."""
  num_users = len(user_leaves)
  item_leaf, partner, pop = cat["item_leaf"], cat["partner"], cat["item_popularity"]
  item_dept = cat["leaf_department"][item_leaf]
  leaf_items = [np.flatnonzero(item_leaf == l) for l in range(len(cat["leaves"]))]
  mean_len = min(max(10.0, REVIEWS_PER_ITEM * num_items / num_users), num_items / 3)
  lengths = np.minimum(MIN_REVIEWS + rng.poisson(mean_len - MIN_REVIEWS, size=num_users),
                       num_items // 2)
  pop_p = pop / pop.sum()
  sequences = []
  for u in range(num_users):
    bought = np.zeros(num_items, dtype=bool)
    seq: list[int] = []
    while len(seq) < lengths[u]:
      last = seq[-1] if seq else -1
      item = -1
      if last >= 0 and partner[last] >= 0 and not bought[partner[last]] \
          and rng.random() < FOLLOW_PROB:
        item = int(partner[last])
      elif rng.random() >= EXPLORE_PROB:
        leaf = user_leaves[u][rng.choice(LEAVES_PER_USER, p=LEAF_WEIGHTS)]
        cand = leaf_items[leaf]
        favourite = cat["item_brand"][cand] == user_brand[u, item_dept[cand]]
        w = pop[cand] * np.where(favourite, BRAND_BOOST, 1.0) * ~bought[cand]
        if w.sum() > 0:
          item = int(cand[rng.choice(len(cand), p=w / w.sum())])
      if item < 0:  # Explore (or the chosen leaf is exhausted): any unbought item.
        w = pop_p * ~bought
        item = int(rng.choice(num_items, p=w / w.sum()))
      bought[item] = True
      seq.append(item)
    sequences.append(seq)
  return sequences


def _top_up(rng, sequences, cat, user_leaves, user_brand) -> None:
  """Makes every item reach MIN_REVIEWS reviews (edits `sequences` in place).

  Missing reviews go preferably to users who like the item's leaf (and brand), at
  random positions that do not split a partner pair.
  """
  num_items = len(cat["item_leaf"])
  partner, item_leaf = cat["partner"], cat["item_leaf"]
  item_dept = cat["leaf_department"][item_leaf]
  counts = np.bincount(np.concatenate([np.asarray(s) for s in sequences]), minlength=num_items)
  owned = [set(s) for s in sequences]
  for item in np.flatnonzero(counts < MIN_REVIEWS):
    score = (np.any(user_leaves == item_leaf[item], axis=1) * 4.0
             + (user_brand[:, item_dept[item]] == cat["item_brand"][item]) * 2.0 + 0.1)
    score *= np.array([item not in o for o in owned])
    need = MIN_REVIEWS - counts[item]
    for u in rng.choice(len(sequences), size=need, replace=False, p=score / score.sum()):
      seq = sequences[u]
      slots = [k for k in range(len(seq) + 1)
               if k == 0 or k == len(seq) or partner[seq[k - 1]] != seq[k]]
      seq.insert(slots[rng.integers(len(slots))], int(item))
      owned[u].add(int(item))


def _times(rng, seq, partner) -> np.ndarray:
  """Non-decreasing day-resolution times: gaps of days, some 0; partners >= 1 day later."""
  start = FIRST_DAY.toordinal() - datetime.date(1970, 1, 1).toordinal()
  day = start + int(rng.integers(START_SPAN_DAYS))
  days = [day]
  for k in range(1, len(seq)):
    is_partner = partner[seq[k - 1]] == seq[k]
    if is_partner:
      gap = 1 + int(rng.integers(14))
    elif rng.random() < EQUAL_TIME_PROB:
      gap = 0
    else:
      gap = 1 + int(rng.geometric(1 / 20))
    day += gap
    days.append(day)
  return np.array(days, dtype=np.int64) * _DAY


def _review_text(rng, world_item: dict, rating: int) -> str:
  """Two or three sentences from the item's brand, attribute, noun and category words."""
  if rating >= 4:
    pools = (_PRAISE, _PRAISE, _MIXED)
  elif rating == 3:
    pools = (_MIXED, _PRAISE, _COMPLAINT)
  else:
    pools = (_COMPLAINT, _MIXED, _COMPLAINT)
  n = 2 + int(rng.random() < 0.5)
  sentences = [pools[k][rng.integers(len(pools[k]))] for k in range(n)]
  feature = world_item["features"][rng.integers(len(world_item["features"]))]
  return " ".join(s.format(feature=feature, **world_item["words"]) for s in sentences)


def build_world(*, category: str = "Demo", num_users: int = 600, num_items: int = 300,
                seed: int = 0) -> World:
  """Generates the demo category in memory (see the module docstring for its signals).

  Args:
    category: category name (first path level and file name part).
    num_users: number of users (all kept: every one has >= 5 reviews).
    num_items: number of items (all kept: every one has >= 5 reviews).
    seed: RNG seed; the world is a pure function of the arguments.

  Returns:
    The `World`, ground truth included.
  """
  check_sizes(num_users, num_items, category)
  rng = np.random.default_rng(seed)
  asins = _random_ids(rng, num_items, "B00", 10)
  user_ids = _random_ids(rng, num_users, "A", 14)
  cat = _build_catalog(rng, category, num_items)
  departments = list(TREE)
  user_leaves, user_brand = _user_preferences(
      rng, num_users, cat["leaf_department"], len(departments))
  sequences = _sequences(rng, cat, user_leaves, user_brand, num_items)
  _top_up(rng, sequences, cat, user_leaves, user_brand)

  item_words = []
  for i in range(num_items):
    dept, sub, leaf = cat["leaves"][cat["item_leaf"][i]]
    brands, subs = TREE[dept]
    _, features, _, nouns = subs[sub]
    item_words.append(dict(features=features, words=dict(
        brand=brands[cat["item_brand"][i]], attr=cat["item_attribute"][i].lower(),
        noun=nouns[leaf].lower(), nouns=leaf.lower(), sub=sub.lower(), dept=dept.lower())))
  item_dept = cat["leaf_department"][cat["item_leaf"]]
  times, texts, ratings = [], [], []
  for u, seq in enumerate(sequences):
    times.append(_times(rng, seq, cat["partner"]))
    favourite = cat["item_brand"][seq] == user_brand[u, item_dept[seq]]
    r = np.where(favourite,
                 rng.choice(5, size=len(seq), p=_RATING_P_FAVOURITE),
                 rng.choice(5, size=len(seq), p=_RATING_P_OTHER)) + 1
    ratings.append(r)
    texts.append([_review_text(rng, item_words[i], int(x)) for i, x in zip(seq, r)])
  return World(
      category=category, leaves=cat["leaves"], leaf_department=cat["leaf_department"],
      departments=departments, asins=asins, titles=cat["titles"],
      descriptions=cat["descriptions"], paths=cat["paths"], item_leaf=cat["item_leaf"],
      item_brand=cat["item_brand"], item_attribute=cat["item_attribute"],
      item_popularity=cat["item_popularity"], partner=cat["partner"], user_ids=user_ids,
      user_leaves=user_leaves, user_brand=user_brand,
      sequences=[np.asarray(s, dtype=np.int64) for s in sequences], times=times,
      texts=texts, ratings=ratings)


def write_world(world: World, out_dir: pathlib.Path) -> dict:
  """Writes the world's review and meta files (gzip with mtime 0: byte-reproducible).

  Returns:
    {"users", "items", "reviews"} counts.
  """
  out_dir = pathlib.Path(out_dir)
  out_dir.mkdir(parents=True, exist_ok=True)
  lines = []
  for u, seq in enumerate(world.sequences):
    for k, item in enumerate(seq):
      lines.append(raw.review_line(world.user_ids[u], world.asins[item], world.texts[u][k],
                                   world.ratings[u][k], world.times[u][k]))
  meta = []
  for i, asin in enumerate(world.asins):
    d = {"asin": asin, "title": world.titles[i]}
    if world.descriptions[i] is not None:
      d["description"] = world.descriptions[i]
    d["categories"] = world.paths[i]
    meta.append(raw.meta_line(d))
  for name, rows in ((raw.reviews_name(world.category) + ".gz", lines),
                     (raw.meta_name(world.category) + ".gz", meta)):
    data = ("\n".join(rows) + "\n").encode("utf-8")
    (out_dir / name).write_bytes(gzip.compress(data, compresslevel=9, mtime=0))
  return {"users": len(world.user_ids), "items": len(world.asins), "reviews": len(lines)}


def generate(out_dir: pathlib.Path, *, category: str = "Demo", num_users: int = 600,
             num_items: int = 300, seed: int = 0) -> dict:
  """Generates the demo category and writes it in the McAuley layout.

  Args:
    out_dir: folder to write `reviews_<category>_5.json.gz` and `meta_<category>.json.gz`
      into (created if missing; existing files of that name are overwritten).
    category: category name.
    num_users: number of users.
    num_items: number of items.
    seed: RNG seed (same arguments -> byte-identical files).

  Returns:
    {"users": U, "items": N, "reviews": R}.
  """
  world = build_world(category=category, num_users=num_users, num_items=num_items, seed=seed)
  counts = write_world(world, out_dir)
  logging.info("demo world %s (seed %d): %d users, %d items, %d reviews -> %s",
               category, seed, counts["users"], counts["items"], counts["reviews"], out_dir)
  return counts


def _main() -> None:
  parser = argparse.ArgumentParser(description="Write the synthetic demo category.")
  parser.add_argument("out_dir", type=pathlib.Path)
  parser.add_argument("--category", default="Demo")
  parser.add_argument("--num_users", type=int, default=600)
  parser.add_argument("--num_items", type=int, default=300)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  print(generate(args.out_dir, category=args.category, num_users=args.num_users,
                 num_items=args.num_items, seed=args.seed))


if __name__ == "__main__":
  _main()
