"""Personal data never reaches a log line."""

import json
import logging

from clarus_pipelines.logs import PiiFilter, mask_pii, mask_text


def test_mask_pii_redacts_personal_fields_in_real_order(payloads):
    order = payloads.json("order_rest_2025_07")
    masked = json.dumps(mask_pii(order))
    address = order["order"]["shipping_address"]
    for value in (address["address1"], address["last_name"], order["order"]["email"]):
        assert value and value not in masked
    assert order["order"]["line_items"][0]["sku"] in masked  # business data stays


def test_clarus_address_keys_are_masked():
    masked = mask_pii({"address_1": "1 High Street", "email_address": "a@b.co", "phone_number": "07700900123", "country": "GB"})
    assert masked["address_1"] != "1 High Street" and masked["email_address"] != "a@b.co"
    assert masked["country"] == "GB"


def test_mask_text_keeps_tracking_numbers_but_hides_phones_and_emails():
    text = mask_text("ring +44 20 7946 0958 or 020 7946 0958; bob@example.com; DPD 15501234567890")
    assert "7946" not in text and "bob@" not in text and "15501234567890" in text


def test_filter_masks_messages_and_args(caplog):
    logger = logging.getLogger("pii-test")
    handler_filter = PiiFilter()
    record = logger.makeRecord("pii-test", logging.INFO, __file__, 1, "customer %s wrote %s", ("jane@example.com", {"first_name": "Jane"}), None)
    handler_filter.filter(record)
    assert "jane@example.com" not in record.getMessage() and "Jane" not in record.getMessage()
