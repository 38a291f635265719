"""`skipcache inspect`: what an export holds, and what could not be read."""
from __future__ import annotations

import numpy as np

from models.columns import PLAY_CODE, session_labels
from models.events import EVENT_TYPES, iso_utc
from models.rejections import Rejections

from stream.files import Dataset


def summarize_export(ds: Dataset) -> dict:
    """Array operations over the columns: an 18M-event export is summarised in seconds."""
    cols = ds.columns
    n = len(cols)
    counts = np.bincount(cols.kind, minlength=len(EVENT_TYPES)) if n else np.zeros(len(EVENT_TYPES), np.int64)
    kinds = sorted(((EVENT_TYPES[k], int(c)) for k, c in enumerate(counts) if c), key=lambda kv: -kv[1])
    labels, _, orphans = session_labels(cols)
    plays = len(labels)
    skipped = int(np.count_nonzero(labels == 0))
    sessions = len(cols.session_starts())
    semantic = Rejections()
    if orphans:
        semantic.counts["sessions/orphan_skip"] = orphans
        semantic.examples["sessions/orphan_skip"] = "a skip whose track is not the session's last played track"
    rejections = Rejections()
    rejections.merge(ds.rejections)
    rejections.merge(semantic)
    users = np.unique(cols.user)
    played = np.unique(cols.track[(cols.kind == PLAY_CODE) & (cols.track >= 0)])
    tracks = {cols.tracks[i] for i in played.tolist()}
    known_users = np.fromiter(ds.catalogue.users, np.int64, len(ds.catalogue.users))
    return {
        "files": ds.files,
        "missing_files": ds.missing,
        "lines": ds.lines,
        "events": n,
        "events_by_type": dict(kinds),
        "plays": plays,
        "skipped_plays": skipped,
        "skip_rate": skipped / plays if plays else float("nan"),
        "users": len(users),
        "users_missing_from_users_file": (int(len(np.setdiff1d(users, known_users, assume_unique=True)))
                                          if ds.catalogue.users else None),
        "tracks": len(tracks),
        "tracks_missing_from_catalogue": len(tracks - set(ds.catalogue.tracks)) if ds.catalogue.tracks else None,
        "sessions": sessions,
        "plays_per_session": plays / sessions if sessions else float("nan"),
        "time_range": [iso_utc(float(cols.ts.min())), iso_utc(float(cols.ts.max()))] if n else None,
        "catalogue": {"users": len(ds.catalogue.users), "tracks": len(ds.catalogue.tracks),
                      "artists": len(ds.catalogue.artist_genres), "track_storage": len(ds.catalogue.storage)},
        "rejected": rejections.total,
        "rejected_by_reason": rejections.as_dict(),
    }


def render_export_summary(s: dict) -> str:
    lines = [f"events          {s['events']:,}  ({', '.join(f'{k} {v:,}' for k, v in s['events_by_type'].items())})",
             f"plays           {s['plays']:,}   skip rate {s['skip_rate']:.3f}",
             f"users           {s['users']:,}   tracks {s['tracks']:,}   sessions {s['sessions']:,}",
             f"plays/session   {s['plays_per_session']:.2f}",
             f"time range      {s['time_range'][0]} .. {s['time_range'][1]}" if s["time_range"] else "time range      -",
             f"catalogue       {', '.join(f'{k} {v:,}' for k, v in s['catalogue'].items())}"]
    if s.get("reading"):
        r = s["reading"]
        lines.append(f"read in         {r['seconds']:.1f} s ({r['lines_per_second']:,} lines/s), peak memory "
                     f"{r['peak_rss_bytes'] / 2**20:,.0f} MiB ({r['peak_bytes_per_event']:,} bytes/event)")
    if s["missing_files"]:
        lines.append(f"missing files   {', '.join(s['missing_files'])}")
    if s.get("users_missing_from_users_file"):
        lines.append(f"users not in users file   {s['users_missing_from_users_file']:,}")
    lines.append(f"rejected        {s['rejected']:,}")
    for reason, info in s["rejected_by_reason"].items():
        lines.append(f"  {reason:<34} {info['count']:>8,}   e.g. {info['example'][:90]}")
    return "\n".join(lines)
