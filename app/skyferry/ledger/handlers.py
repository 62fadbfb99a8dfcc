"""The ledger's command handlers: which decision function handles which command, on which aggregate.

The decisions themselves are plain functions next to their aggregates
(:mod:`skyferry.ledger.account`, :mod:`skyferry.ledger.transfer`); this module only
registers them on an :class:`~skyferry.core.application.Application`.
"""

from __future__ import annotations

from skyferry.core.application import Application
from skyferry.ledger import account as acc
from skyferry.ledger import commands as cmd
from skyferry.ledger import transfer as tr


def register_handlers(app: Application) -> None:
    """Register every ledger command handler on ``app``."""
    account_id, transfer_id = acc.account_id_of, tr.transfer_id_of
    app.register(cmd.OpenAccount, acc.Account, account_id, acc.open_account)
    app.register(cmd.Deposit, acc.Account, account_id, acc.deposit)
    app.register(cmd.Withdraw, acc.Account, account_id, acc.withdraw)
    app.register(cmd.CloseAccount, acc.Account, account_id, acc.close_account)
    app.register(cmd.DebitForTransfer, acc.Account, account_id, acc.debit_for_transfer)
    app.register(cmd.CreditForTransfer, acc.Account, account_id, acc.credit_for_transfer)
    app.register(cmd.RefundTransfer, acc.Account, account_id, acc.refund_transfer)
    app.register(cmd.TransferMoney, tr.Transfer, transfer_id, tr.start_transfer)
    app.register(cmd.MarkTransferDebited, tr.Transfer, transfer_id, tr.mark_debited)
    app.register(cmd.CompleteTransfer, tr.Transfer, transfer_id, tr.complete_transfer)
    app.register(cmd.FailTransfer, tr.Transfer, transfer_id, tr.fail_transfer)
