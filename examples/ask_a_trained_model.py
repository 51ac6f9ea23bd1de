"""Ask a trained GenSAR model from Python: one recommendation and one search, printed.

  python examples/ask_a_trained_model.py /tmp/gensar_demo

The argument is a workdir whose train stage ran (the demo's, after the README's first
command). Prints the top 5 items of each answer with their scores.
"""

import sys

from gensar_jax.inference import api


def main(workdir: str) -> None:
  model = api.GenSAR.load(workdir)
  item = model.catalog.item_ids[0]  # The demo's ids are generated; take any.
  history = [("rec", item), ("search", "kitchen cookware saucepan", item)]
  answers = {
      "recommendation": model.recommend([history], k=5)[0],
      "search 'usb power bank'": model.search([history], ["usb power bank"], k=5)[0],
  }
  for what, answer in answers.items():
    print(f"{what} after {len(history)} events:")
    if answer.error:
      print(f"  refused: {answer.error}")
    for hit in answer.hits:
      print(f"  {hit.score:8.3f}  {hit.item_id}  {hit.title}")
    for note in answer.notes:
      print(f"  note: {note}")


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "/tmp/gensar_demo")
