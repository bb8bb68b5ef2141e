"""refund failures and resume failures

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-23 16:30:00

A Stripe refund that fails is recorded on its payment_refunds row (failure_reason, failed_at, the
deposit that brought its money back, how an operator resolved it) and on the payment (refund_owed);
an offset order whose refund failed is `refund_failed`. The resume job records why it could not
finish a paid offset order (resume_attempts, resume_error).
"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None

OLD_STATUSES = ('draft', 'awaiting_payment', 'paid', 'filled', 'retired', 'cancelled', 'refunded')
NEW_STATUSES = OLD_STATUSES + ('refund_failed',)


def _in(values):
    return "status IN (" + ", ".join(f"'{v}'" for v in values) + ")"


def upgrade():
    with op.batch_alter_table('offset_orders', schema=None) as batch_op:
        batch_op.add_column(sa.Column('resume_attempts', sa.Integer(), server_default='0', nullable=False))
        batch_op.add_column(sa.Column('resume_error', sa.Text(), nullable=True))
        batch_op.drop_constraint(op.f('ck_offset_orders_offset_status'), type_='check')
        batch_op.create_check_constraint('offset_status', _in(NEW_STATUSES))

    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.add_column(sa.Column('refund_owed', sa.BigInteger(), server_default='0', nullable=False))
        batch_op.create_check_constraint('refund_owed_nonnegative', 'refund_owed >= 0')

    with op.batch_alter_table('payment_refunds', schema=None) as batch_op:
        batch_op.add_column(sa.Column('failure_reason', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('failed_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('returned_deposit_id', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('resolved_at', sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column('resolution', sa.Text(), nullable=True))
        batch_op.create_foreign_key(batch_op.f('fk_payment_refunds_returned_deposit_id_deposits'), 'deposits',
                                    ['returned_deposit_id'], ['id'])


def downgrade():
    with op.batch_alter_table('payment_refunds', schema=None) as batch_op:
        batch_op.drop_constraint(batch_op.f('fk_payment_refunds_returned_deposit_id_deposits'), type_='foreignkey')
        for c in ('resolution', 'resolved_at', 'returned_deposit_id', 'failed_at', 'failure_reason'):
            batch_op.drop_column(c)

    with op.batch_alter_table('payments', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_payments_refund_owed_nonnegative'), type_='check')
        batch_op.drop_column('refund_owed')

    with op.batch_alter_table('offset_orders', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_offset_orders_offset_status'), type_='check')
        batch_op.create_check_constraint('offset_status', _in(OLD_STATUSES))
        batch_op.drop_column('resume_error')
        batch_op.drop_column('resume_attempts')
