"""The KT4 action log of the simulated steps: every row a learner's app would have logged.

Per bundle: enter b.., audio play/pause pairs on listening bundles, the respond and
erase_choice events of each question (the last respond is the answer), submit b..; then
optionally the explanation (enter e.., audio replays, quit e..); lectures between bundles
(enter l.., play/pause video, quit l..). Times are spread strictly inside each window, so
a learner's timestamps strictly increase.
"""

from __future__ import annotations

import numpy as np

from dsrsd_cli.samples.ednet_model import (
    BUNDLE,
    ENTER,
    ERASE,
    EXPLANATION,
    LECTURE,
    PAUSE_AUDIO,
    PAUSE_VIDEO,
    PLAY_AUDIO,
    PLAY_VIDEO,
    QUESTION,
    QUIT,
    RESPOND,
    SUBMIT,
)
from dsrsd_cli.samples.ednet_simulate import Catalogue


# ------------------------------------------------------------------ KT4 events

def _ragged(counts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For groups of sizes `counts`: each element's group and its rank inside the group."""
    parent = np.repeat(np.arange(len(counts)), counts)
    starts = np.cumsum(counts) - counts
    return parent, np.arange(len(parent)) - starts[parent]


def _spread(rng: np.random.Generator, start: np.ndarray, length: np.ndarray, counts: np.ndarray):
    """`counts[g]` distinct increasing ms times strictly inside (start[g], start[g] + length[g]) per group.

    Returns (group, rank, time) flat, group-major. Needs length > counts (guaranteed by the caps).
    """
    parent, rank = _ragged(counts)
    u = np.sort(rng.random(len(parent)) + parent) - parent   # sorted uniforms within each group
    room = (length - counts - 1)[parent]
    return parent, rank, start[parent] + 1 + (u * room).astype(np.int64) + rank


def _block(user, time, action, prefix, number, source, platform, cursor=None, answer=None) -> dict:
    n = len(time)

    def full(value):   # a scalar or an array -> an array of n
        return np.broadcast_to(np.asarray(value), (n,))

    return dict(
        user=full(user), time=full(time), action=full(action), prefix=full(prefix), number=full(number),
        source=full(source), platform=full(platform),
        cursor=full(-1 if cursor is None else cursor), answer=full(-1 if answer is None else answer),
    )


def _media_cursor(group: np.ndarray, rank: np.ndarray, time: np.ndarray, resume: bool):
    """Play/pause pairs at ranks (0, 1), (2, 3), ... of each group: is_play and cursor (ms into the media).

    Audio restarts at 0 on each play (as in the release); video resumes where it was paused.
    """
    is_play = rank % 2 == 0
    segment = time[~is_play] - time[is_play]                  # one per pair, group-major
    played_from = np.zeros_like(segment)
    if resume:
        pair_group = group[is_play]
        done = np.cumsum(segment) - segment                   # played before this pair, over all groups
        played_from = done - done[np.searchsorted(pair_group, pair_group)]
    cursor = np.empty(len(time), np.int64)
    cursor[is_play] = played_from
    cursor[~is_play] = played_from + segment
    return is_play, cursor


def kt4_events(cat: Catalogue, steps: dict, answers: dict, keep: np.ndarray, rng: np.random.Generator) -> dict:
    """Every KT4 action row of the learners kept, as flat arrays sorted by (user, time)."""
    s = {k: v[keep] for k, v in steps.items()}
    a_keep = keep[answers["step_row"]]
    rows_kept = np.cumsum(keep) - 1                       # old step row -> kept step row
    a = {k: v[a_keep] for k, v in answers.items()}
    a_row = rows_kept[a["step_row"]]
    user, src, plat, bundle = s["user"], s["source"], s["platform"], s["bundle"]
    bundle_num = bundle + 1
    blocks = []

    # lectures between bundles: enter l, play/pause video, quit l
    lec = np.flatnonzero(s["has_lecture"])
    l_num, l_src = s["lecture"][lec] + 1, s["lecture_source"][lec]
    l_enter, l_ms = s["lecture_enter"][lec], s["lecture_ms"][lec]
    blocks.append(_block(user[lec], l_enter, ENTER, LECTURE, l_num, l_src, plat[lec]))
    blocks.append(_block(user[lec], l_enter + l_ms, QUIT, LECTURE, l_num, l_src, plat[lec]))
    group, rank, time = _spread(rng, l_enter, l_ms, 2 * s["lecture_pairs"][lec])
    play, cursor = _media_cursor(group, rank, time, resume=True)
    r = lec[group]
    blocks.append(_block(user[r], time, np.where(play, PLAY_VIDEO, PAUSE_VIDEO), LECTURE, l_num[group], l_src[group],
                         plat[r], cursor))

    # the bundle: enter b, audio pairs, then per question its erase/respond events, submit b
    blocks.append(_block(user, s["enter"], ENTER, BUNDLE, bundle_num, src, plat))
    blocks.append(_block(user, s["enter"] + s["bundle_ms"], SUBMIT, BUNDLE, bundle_num, src, plat))
    per_answer = a["n_erase"] + a["n_extra"] + 1
    answer_of, rank = _ragged(per_answer)
    final = rank == per_answer[answer_of] - 1
    is_erase = rank < a["n_erase"][answer_of]
    shuffle = np.lexsort((np.where(final, 2.0, rng.random(len(rank))), answer_of))   # final respond stays last
    is_erase = is_erase[shuffle]
    choices, key = cat.q_choices[a["question"]][answer_of], a["answer"][answer_of]
    other = (key + 1 + (rng.random(len(rank)) * (choices - 1)).astype(int)) % choices
    letter = np.where(final, key, other)
    q_events = np.bincount(a_row, weights=per_answer, minlength=len(user)).astype(int)
    audio = 2 * s["audio_pairs"]
    group, rank_in_bundle, time = _spread(rng, s["enter"], s["bundle_ms"], audio + q_events)
    on_audio = rank_in_bundle < audio[group]
    # audio first (listen, then answer); the question events follow in order
    g_audio = group[on_audio]
    play, cursor = _media_cursor(g_audio, rank_in_bundle[on_audio], time[on_audio], resume=False)
    blocks.append(_block(user[g_audio], time[on_audio], np.where(play, PLAY_AUDIO, PAUSE_AUDIO), BUNDLE,
                         bundle_num[g_audio], src[g_audio], plat[g_audio], cursor))
    g_q = group[~on_audio]
    blocks.append(_block(user[g_q], time[~on_audio], np.where(is_erase, ERASE, RESPOND), QUESTION,
                         a["question"][answer_of] + 1, src[g_q], plat[g_q], answer=letter))

    # the explanation: enter e, audio replays of the bundle, quit e
    ex = np.flatnonzero(s["read"])
    e_enter, e_ms = s["explain_enter"][ex], s["explain_ms"][ex]
    blocks.append(_block(user[ex], e_enter, ENTER, EXPLANATION, bundle_num[ex], src[ex], plat[ex]))
    blocks.append(_block(user[ex], e_enter + e_ms, QUIT, EXPLANATION, bundle_num[ex], src[ex], plat[ex]))
    group, rank, time = _spread(rng, e_enter, e_ms, 2 * s["explain_pairs"][ex])
    play, cursor = _media_cursor(group, rank, time, resume=False)
    r = ex[group]
    blocks.append(_block(user[r], time, np.where(play, PLAY_AUDIO, PAUSE_AUDIO), BUNDLE, bundle_num[r], src[r], plat[r],
                         cursor))

    events = {k: np.concatenate([b[k] for b in blocks]) for k in blocks[0]}
    order = np.lexsort((events["time"], events["user"]))
    events = {k: v[order] for k, v in events.items()}
    same_user = events["user"][1:] == events["user"][:-1]
    if np.any(same_user & (np.diff(events["time"]) <= 0)):
        raise RuntimeError("EdNet sample: KT4 timestamps are not strictly increasing (simulator bug)")
    return events
