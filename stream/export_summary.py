"""`skipcache inspect`: what an export holds, and what could not be read."""
from __future__ import annotations

from collections import Counter

from models.events import PLAY, iso_utc
from models.labels import label_session
from models.rejections import Rejections

from stream.files import Dataset


def summarize_export(ds: Dataset) -> dict:
    events = ds.events
    kinds = Counter(e.kind for e in events)
    plays = skipped = sessions = orphans = 0
    start = 0
    n = len(events)
    semantic = Rejections()
    while start < n:
        first = events[start]
        end = start + 1
        while end < n and events[end].session_id == first.session_id and events[end].user_id == first.user_id:
            end += 1
        labels, orph = label_session(events[start:end])
        plays += len(labels)
        skipped += labels.count(0)
        orphans += orph
        sessions += 1
        start = end
    if orphans:
        semantic.counts["sessions/orphan_skip"] = orphans
        semantic.examples["sessions/orphan_skip"] = "a skip whose track is not the session's last played track"
    rejections = Rejections()
    rejections.merge(ds.rejections)
    rejections.merge(semantic)
    users = {e.user_id for e in events}
    tracks = {e.track_id for e in events if e.kind == PLAY}
    ts = [e.ts for e in events]
    return {
        "files": ds.files,
        "missing_files": ds.missing,
        "lines": ds.lines,
        "events": len(events),
        "events_by_type": dict(kinds.most_common()),
        "plays": plays,
        "skipped_plays": skipped,
        "skip_rate": skipped / plays if plays else float("nan"),
        "users": len(users),
        "users_missing_from_users_file": len(users - set(ds.catalogue.users)) if ds.catalogue.users else None,
        "tracks": len(tracks),
        "tracks_missing_from_catalogue": len(tracks - set(ds.catalogue.tracks)) if ds.catalogue.tracks else None,
        "sessions": sessions,
        "plays_per_session": plays / sessions if sessions else float("nan"),
        "time_range": [iso_utc(min(ts)), iso_utc(max(ts))] if ts else None,
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
    if s["missing_files"]:
        lines.append(f"missing files   {', '.join(s['missing_files'])}")
    if s.get("users_missing_from_users_file"):
        lines.append(f"users not in users file   {s['users_missing_from_users_file']:,}")
    lines.append(f"rejected        {s['rejected']:,}")
    for reason, info in s["rejected_by_reason"].items():
        lines.append(f"  {reason:<34} {info['count']:>8,}   e.g. {info['example'][:90]}")
    return "\n".join(lines)
