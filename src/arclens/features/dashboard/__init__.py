"""The static dashboard of a features folder: `arclens dashboard FDIR --out SITE` (docs/DASHBOARD.md)."""

from arclens.features.dashboard.build import build_dashboard

__all__ = ["build_dashboard"]
