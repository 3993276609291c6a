"""RDS+'s own round-robin picking loop, transcribed line by line as the tests' reference
(hamishivi/automated-instruction-selection, get_top_influences.py, --selection_method max)."""
import numpy as np


def rds_plus_picks(lists: list[np.ndarray], budget: int) -> list[int]:
    """Per list (test point / subtask) its (train index, score) pairs sorted by score, reverse
    (Python's stable sort); round after round each list pops its best, appended then
    de-duplicated in order (remove_dupes_ordered), until `budget` are saved."""
    sorted_lists = {t: sorted(enumerate(col.tolist()), key=lambda x: x[1], reverse=True) for t, col in enumerate(lists)}
    saved: list[int] = []
    while len(saved) < budget:
        for t in sorted_lists:
            inst, _ = sorted_lists[t].pop(0)
            saved.append(inst)
            saved = list(dict.fromkeys(saved))
            if len(saved) >= budget:
                break
    return saved[:budget]
