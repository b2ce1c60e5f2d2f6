from tests.factories import make_user, sign_in


def test_sign_in_reaches_dashboard(client, db):
    user = make_user(db)
    response = sign_in(client, user.email)
    assert response.status_code == 303
    assert response.headers["location"] == "/"
    page = client.get("/")
    assert page.status_code == 200
    assert f"Signed in as {user.email}" in page.text
