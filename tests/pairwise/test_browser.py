"""End to end in real headless Chromium (Debian's `chromium` and `chromium-driver`, via Selenium):
a private rater and a Prolific rater each finish a session against a server subprocess, and the
completion code appears only once the last rating is stored.

Set PAIRWISE_SCREENSHOTS=DIR to keep screenshots of the rating, completion and admin pages.
"""

import os
from pathlib import Path

import pytest

from arch_compare.pairwise.campaign import CampaignPlan, CampaignSettings
from arch_compare.pairwise.items import Item
from arch_compare.pairwise.store import PairwiseStore
from tests.pairwise.conftest import ADMIN_TOKEN, IMITATION, TARGET, free_port, make_gold

pytest.importorskip("selenium", reason="needs selenium (the test extra)")
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.common.exceptions import WebDriverException  # noqa: E402
from selenium.webdriver.support.ui import WebDriverWait  # noqa: E402

CODE = "PROLIFIC-OK-42"


def _left_the_page(element):
    """A wait condition: `element`'s page has been replaced. Chromium reports this either as a
    stale element or as a node that "does not belong to the document"; both mean gone."""
    def gone(driver) -> bool:
        try:
            element.is_enabled()
        except WebDriverException:
            return True
        return False
    return gone


def realistic_items(count: int) -> list[Item]:
    return [Item(f"item-{n}", f"Give three tips for writing clear commit messages (case {n}).",
                 TARGET, "Here are three tips:\n\n1. Start with a short summary line in the "
                         "imperative mood.\n2. Explain why the change was made, not only what "
                         "changed.\n3. Keep unrelated changes in separate commits.",
                 IMITATION, "Commit messages should be clear. Write what you did and try to "
                            "be short, because long messages are hard to read.")
            for n in range(count)]


@pytest.fixture
def browser(chromium):
    return chromium


def screenshot(driver, name: str) -> None:
    folder = os.environ.get("PAIRWISE_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        driver.save_screenshot(str(Path(folder) / f"{name}.png"))


def rate_session(driver, store: PairwiseStore, campaign, rater_id: str, code: str | None):
    """Rates every item through the page; checks the stored count and the code after each."""
    total = None
    for answered in range(100):
        stored = sum(row["rater_id"] == rater_id for row in store.rating_rows(campaign))
        assert stored == answered
        if not driver.find_elements(By.NAME, "choice"):
            return total, answered
        if code is not None:
            assert code not in driver.page_source  # not before the last rating is stored
        header = driver.find_element(By.CSS_SELECTOR, ".progress span").text
        assert header == f"Item {answered + 1} of {header.split()[-1]}"
        total = int(header.split()[-1])
        if answered == 0:
            screenshot(driver, f"rating-{rater_id.split(':')[0]}")
        choices = driver.find_elements(By.CSS_SELECTOR, ".choices label")
        assert [c.text for c in choices] == ["A is better", "B is better", "Tie", "Both are bad"]
        choices[answered % 4].click()
        driver.find_element(By.ID, "reason").send_keys(f"reason {answered}")
        button = driver.find_element(By.CSS_SELECTOR, "button[type=submit]")
        button.click()
        # The next page has replaced this one (POST, redirect, GET all done).
        WebDriverWait(driver, 10).until(_left_the_page(button))
        WebDriverWait(driver, 10).until(
            lambda d: d.execute_script("return document.readyState") == "complete")
    raise AssertionError("the session did not end")


def test_private_and_prolific_raters_complete_in_chromium(tmp_path, browser, server_factory):
    db = tmp_path / "pairwise.sqlite"
    store = PairwiseStore(str(db))
    store.set_admin_token(ADMIN_TOKEN)
    port = free_port()
    campaign = store.create_campaign(
        "browser", realistic_items(6), make_gold(2),
        CampaignPlan(overlap=2, items_per_rater=3, gold_per_rater=1, seed=5),
        CampaignSettings(workforce="private"))
    (_, invite), = store.invite(campaign, 1)
    server = server_factory(db, port).start()

    browser.get(f"{server.base}/rate/{invite}")
    total, answered = rate_session(browser, store, campaign, "private:invite-1", code=None)
    assert answered == total == 4
    assert "Thank you, all done" in browser.page_source
    assert not browser.find_elements(By.ID, "completion-code")  # private raters get no code

    # Switch the same campaign to Prolific; its finish page sends raters back to a local page.
    campaign = store.configure("browser", workforce="prolific", completion_code=CODE,
                               completion_url=f"{server.base}/?cc={{code}}", redirect_seconds=2)
    browser.delete_all_cookies()
    browser.get(f"{server.base}/p/{campaign.public_id}"
                f"?PROLIFIC_PID=5f0c1a2b3c4d5e6f7a8b9c0d&STUDY_ID=study1&SESSION_ID=sess1")
    total, answered = rate_session(browser, store, campaign,
                                   "prolific:5f0c1a2b3c4d5e6f7a8b9c0d", code=CODE)
    assert answered == total == 4
    assert browser.find_element(By.ID, "completion-code").text == CODE
    screenshot(browser, "complete-prolific")
    WebDriverWait(browser, 15).until(lambda d: f"cc={CODE}" in d.current_url)
    assert browser.current_url == f"{server.base}/?cc={CODE}"

    # The administrator signs in through the form and sees both raters and the model names.
    browser.get(f"{server.base}/admin/login")
    browser.find_element(By.ID, "token").send_keys(ADMIN_TOKEN)
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    WebDriverWait(browser, 10).until(lambda d: d.current_url.endswith("/admin"))
    browser.find_element(By.LINK_TEXT, "browser").click()
    WebDriverWait(browser, 10).until(lambda d: "/admin/campaigns/" in d.current_url)
    page = browser.page_source
    assert "private:invite-1" in page and "prolific:5f0c1a2b3c4d5e6f7a8b9c0d" in page
    assert TARGET in page and IMITATION in page
    screenshot(browser, "admin-campaign")
    store.close()
