"""WeChat Official Account: bindings, visits, the shared access token, callback guards and
report-ready notifications."""
from ..wechat import WECHAT_MODELS


def up(db):
    db.create_tables(WECHAT_MODELS, safe=True)


def down(db):
    db.drop_tables(list(reversed(WECHAT_MODELS)), safe=True)
