"""demo.grafana_dashboards (compose service ``grafana-dashboards``): the dashboards Grafana serves
carry TRAIL_WEB_URL as the base of every trail-web link, a bad value stops Grafana from starting,
and only the dashboards it wrote are ever deleted."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml

from demo import grafana_dashboards

pytestmark = pytest.mark.unit

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "grafana" / "dashboards"
URL = "https://trail.example.com/ops"


def _links(dashboard: object) -> list[str]:
    """Every trail-web link of a dashboard, with its constant expanded."""
    text = json.dumps(dashboard)
    (value,) = {v["query"] for v in dashboard["templating"]["list"] if v["name"] == "trail_web_url"}  # type: ignore[index]
    return [link.replace("${trail_web_url:raw}", value) for link in re.findall(r"\$\{trail_web_url:raw\}[^\"]*", text)]


def test_every_trail_web_link_of_every_dashboard_gets_the_address(tmp_path: Path) -> None:
    assert grafana_dashboards.main([str(SOURCE), str(tmp_path)], {"TRAIL_WEB_URL": URL + "/"}) == 0
    for path in sorted(SOURCE.glob("*.json")):
        rendered = json.loads((tmp_path / path.name).read_text())
        original = json.loads(path.read_text())
        links = _links(rendered)
        assert links and all(link.startswith(URL + "/") for link in links), path.name
        (variable,) = [v for v in rendered["templating"]["list"] if v["name"] == "trail_web_url"]
        assert variable["current"] == {"text": URL, "value": URL}
        # Nothing else changes.
        for dashboard in (rendered, original):
            dashboard["templating"]["list"] = [
                v for v in dashboard["templating"]["list"] if v["name"] != "trail_web_url"
            ]
        assert rendered == original
        assert (tmp_path / path.name).stat().st_mode & 0o444 == 0o444  # Grafana is another user


def test_unset_means_the_default_address(tmp_path: Path) -> None:
    assert grafana_dashboards.main([str(SOURCE), str(tmp_path)], {}) == 0
    rendered = json.loads((tmp_path / "request-trail.json").read_text())
    assert all(link.startswith("http://localhost:8090/") for link in _links(rendered))


@pytest.mark.parametrize("bad", ["trail.example.com", "javascript:alert(1)", "http://", "http://host/a b"])
def test_an_address_that_is_not_a_url_stops_it(tmp_path: Path, bad: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert grafana_dashboards.main([str(SOURCE), str(tmp_path / "out")], {"TRAIL_WEB_URL": bad}) == 2
    assert "TRAIL_WEB_URL" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_only_dashboards_it_wrote_are_removed(tmp_path: Path) -> None:
    source, target = tmp_path / "source", tmp_path / "target"
    source.mkdir()
    target.mkdir()
    for name in ("a.json", "b.json"):
        (source / name).write_text(json.dumps({"title": name}))
    (target / "someone-elses.json").write_text("{}")
    (target / "notes.txt").write_text("kept")
    assert grafana_dashboards.main([str(source), str(target)], {}) == 0
    assert sorted(p.name for p in target.iterdir()) == [
        ".rendered",
        "a.json",
        "b.json",
        "notes.txt",
        "someone-elses.json",
    ]
    (source / "b.json").unlink()
    assert grafana_dashboards.main([str(source), str(target)], {}) == 0
    assert sorted(p.name for p in target.iterdir()) == [".rendered", "a.json", "notes.txt", "someone-elses.json"]


def test_compose_runs_it_before_grafana_and_grafana_reads_what_it_wrote() -> None:
    compose = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    step, grafana = compose["services"]["grafana-dashboards"], compose["services"]["grafana"]
    assert step["command"][:3] == ["python", "-m", "demo.grafana_dashboards"]
    source, target = step["command"][3:]
    assert f"./grafana/dashboards:{source}:ro" in step["volumes"]
    (volume,) = [v.split(":")[0] for v in step["volumes"] if v.split(":")[1] == target]
    assert f"{volume}:/etc/grafana/dashboards:ro" in [v.split("#")[0].strip() for v in grafana["volumes"]]
    assert grafana["depends_on"]["grafana-dashboards"] == {"condition": "service_completed_successfully"}
    assert "TRAIL_WEB_URL" in step["environment"]
