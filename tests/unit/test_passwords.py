from threatflow.auth import passwords


def test_hash_verifies_and_is_argon2id():
    stored = passwords.hash_password("correct horse battery staple")
    assert stored.startswith("$argon2id$")
    assert passwords.verify_password(stored, "correct horse battery staple")
    assert not passwords.verify_password(stored, "wrong password!!")


def test_unknown_user_verification_is_false():
    assert passwords.verify_password(None, "anything at all") is False


def test_garbage_hash_is_false_not_error():
    assert passwords.verify_password("not-a-hash", "whatever") is False
