"""rewards mall, rewards pool, badges, programme periods and offers

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-23 11:47:41.987255

Generated from registry.rewards (rewards, redemptions), exchange.rewards_pool (the pool, its inflows
by trade, merchant payments; an index on movements.transfer_id), registry.recognition (badges,
recognised batches, members' year totals), registry.programme_periods (closed
periods with their gram carry) and exchange.programme_issuance (offers of issued programme credits).
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade():
    op.create_table('rewards',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('merchant_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('title', sa.String(length=200), nullable=False),
    sa.Column('description', sa.Text(), nullable=True),
    sa.Column('city', sa.String(length=64), nullable=True),
    sa.Column('points_price', sa.BigInteger(), nullable=False),
    sa.Column('cash_value', sa.BigInteger(), nullable=False),
    sa.Column('stock', sa.BigInteger(), nullable=False),
    sa.Column('valid_from', sa.Date(), nullable=False),
    sa.Column('valid_until', sa.Date(), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.CheckConstraint("kind IN ('voucher', 'park_ticket', 'museum_ticket', 'transit_coupon')", name=op.f('ck_rewards_kind')),
    sa.CheckConstraint('cash_value >= 0', name=op.f('ck_rewards_cash_nonnegative')),
    sa.CheckConstraint('points_price > 0', name=op.f('ck_rewards_points_positive')),
    sa.CheckConstraint('stock >= 0', name=op.f('ck_rewards_stock_nonnegative')),
    sa.CheckConstraint('valid_from <= valid_until', name=op.f('ck_rewards_validity_order')),
    sa.ForeignKeyConstraint(['merchant_id'], ['holders.id'], name=op.f('fk_rewards_merchant_id_holders')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rewards'))
    )
    with op.batch_alter_table('rewards', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_rewards_merchant_id'), ['merchant_id'], unique=False)

    op.create_table('rewards_pool',
    sa.Column('id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('holder_id', sa.Integer(), nullable=False),
    sa.Column('scanned_trade_id', sa.BigInteger(), server_default='0', nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.CheckConstraint('id = 1', name=op.f('ck_rewards_pool_single')),
    sa.ForeignKeyConstraint(['holder_id'], ['holders.id'], name=op.f('fk_rewards_pool_holder_id_holders')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rewards_pool')),
    sa.UniqueConstraint('holder_id', name=op.f('uq_rewards_pool_holder_id'))
    )
    op.create_table('user_badges',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=32), nullable=False),
    sa.Column('achieved_at', sa.DateTime(), nullable=True),
    sa.Column('awarded_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_user_badges_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_user_badges')),
    sa.UniqueConstraint('user_id', 'code', name=op.f('uq_user_badges_user_id_code'))
    )
    op.create_table('programme_periods',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('programme_id', sa.Integer(), nullable=False),
    sa.Column('period', sa.String(length=7), nullable=False),
    sa.Column('period_start', sa.Date(), nullable=False),
    sa.Column('period_end', sa.Date(), nullable=False),
    sa.Column('counted_g', sa.BigInteger(), nullable=False),
    sa.Column('carried_in_g', sa.BigInteger(), nullable=False),
    sa.Column('kg', sa.BigInteger(), nullable=False),
    sa.Column('carried_out_g', sa.BigInteger(), nullable=False),
    sa.Column('report_id', sa.Integer(), nullable=True),
    sa.Column('closed_at', sa.DateTime(), nullable=False),
    sa.Column('closed_by_id', sa.Integer(), nullable=True),
    sa.CheckConstraint('(kg > 0) = (report_id IS NOT NULL)', name=op.f('ck_programme_periods_report_iff_kg')),
    sa.CheckConstraint('carried_in_g + counted_g = kg * 1000 + carried_out_g', name=op.f('ck_programme_periods_grams_conserved')),
    sa.CheckConstraint('carried_out_g >= 0 AND carried_out_g < 1000', name=op.f('ck_programme_periods_carry_below_a_kg')),
    sa.CheckConstraint('counted_g >= 0 AND carried_in_g >= 0 AND kg >= 0', name=op.f('ck_programme_periods_nonnegative')),
    sa.CheckConstraint('period_start <= period_end', name=op.f('ck_programme_periods_period_order')),
    sa.ForeignKeyConstraint(['closed_by_id'], ['users.id'], name=op.f('fk_programme_periods_closed_by_id_users')),
    sa.ForeignKeyConstraint(['programme_id'], ['projects.id'], name=op.f('fk_programme_periods_programme_id_projects')),
    sa.ForeignKeyConstraint(['report_id'], ['monitoring_reports.id'], name=op.f('fk_programme_periods_report_id_monitoring_reports')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_programme_periods')),
    sa.UniqueConstraint('programme_id', 'period', name=op.f('uq_programme_periods_programme_id_period')),
    sa.UniqueConstraint('report_id', name=op.f('uq_programme_periods_report_id'))
    )
    with op.batch_alter_table('programme_periods', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_programme_periods_programme_id'), ['programme_id'], unique=False)

    op.create_table('programme_offers',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('period_id', sa.Integer(), nullable=False),
    sa.Column('batch_id', sa.Integer(), nullable=False),
    sa.Column('instrument_id', sa.Integer(), nullable=False),
    sa.Column('order_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('qty_kg', sa.BigInteger(), nullable=False),
    sa.Column('price', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['batch_id'], ['batches.id'], name=op.f('fk_programme_offers_batch_id_batches')),
    sa.ForeignKeyConstraint(['instrument_id'], ['instruments.id'], name=op.f('fk_programme_offers_instrument_id_instruments')),
    sa.ForeignKeyConstraint(['order_id'], ['orders.id'], name=op.f('fk_programme_offers_order_id_orders')),
    sa.ForeignKeyConstraint(['period_id'], ['programme_periods.id'], name=op.f('fk_programme_offers_period_id_programme_periods')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_programme_offers')),
    sa.UniqueConstraint('period_id', name=op.f('uq_programme_offers_period_id'))
    )
    op.create_table('reward_redemptions',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('code', sa.String(length=24), nullable=False),
    sa.Column('reward_id', sa.Integer(), nullable=False),
    sa.Column('merchant_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('points', sa.BigInteger(), nullable=False),
    sa.Column('cash_value', sa.BigInteger(), nullable=False),
    sa.Column('points_entry_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('valid_until', sa.Date(), nullable=False),
    sa.Column('status', sa.String(length=8), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('used_at', sa.DateTime(), nullable=True),
    sa.Column('used_by_id', sa.Integer(), nullable=True),
    sa.CheckConstraint("(status = 'used') = (used_at IS NOT NULL)", name=op.f('ck_reward_redemptions_used_at_iff_used')),
    sa.CheckConstraint("status IN ('issued', 'used')", name=op.f('ck_reward_redemptions_status')),
    sa.ForeignKeyConstraint(['merchant_id'], ['holders.id'], name=op.f('fk_reward_redemptions_merchant_id_holders')),
    sa.ForeignKeyConstraint(['points_entry_id'], ['points_entries.id'], name=op.f('fk_reward_redemptions_points_entry_id_points_entries')),
    sa.ForeignKeyConstraint(['reward_id'], ['rewards.id'], name=op.f('fk_reward_redemptions_reward_id_rewards')),
    sa.ForeignKeyConstraint(['used_by_id'], ['users.id'], name=op.f('fk_reward_redemptions_used_by_id_users')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_reward_redemptions_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_reward_redemptions')),
    sa.UniqueConstraint('code', name=op.f('uq_reward_redemptions_code')),
    sa.UniqueConstraint('points_entry_id', name=op.f('uq_reward_redemptions_points_entry_id'))
    )
    with op.batch_alter_table('reward_redemptions', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_reward_redemptions_merchant_id'), ['merchant_id'], unique=False)
        batch_op.create_index(batch_op.f('ix_reward_redemptions_reward_id'), ['reward_id'], unique=False)
        batch_op.create_index('ix_reward_redemptions_user', ['user_id', 'id'], unique=False)

    op.create_table('rewards_pool_inflows',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('trade_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('seller_id', sa.Integer(), nullable=False),
    sa.Column('programme_kg', sa.BigInteger(), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.String(length=8), nullable=False),
    sa.Column('journal_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('funded_at', sa.DateTime(), nullable=True),
    sa.CheckConstraint('amount > 0 AND programme_kg > 0', name=op.f('ck_rewards_pool_inflows_positive')),
    sa.CheckConstraint("status IN ('pending', 'funded')", name=op.f('ck_rewards_pool_inflows_status')),
    sa.CheckConstraint("(status = 'funded') = (journal_id IS NOT NULL AND funded_at IS NOT NULL)", name=op.f('ck_rewards_pool_inflows_funded_iff_journal')),
    sa.ForeignKeyConstraint(['journal_id'], ['journals.id'], name=op.f('fk_rewards_pool_inflows_journal_id_journals')),
    sa.ForeignKeyConstraint(['seller_id'], ['holders.id'], name=op.f('fk_rewards_pool_inflows_seller_id_holders')),
    sa.ForeignKeyConstraint(['trade_id'], ['trades.id'], name=op.f('fk_rewards_pool_inflows_trade_id_trades')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_rewards_pool_inflows')),
    sa.UniqueConstraint('trade_id', name=op.f('uq_rewards_pool_inflows_trade_id'))
    )
    op.create_index('ix_rewards_pool_inflows_pending', 'rewards_pool_inflows', ['status', 'id'])
    # a trade's delivered serials are found through its transfer (exchange.rewards_pool)
    op.create_index('ix_movements_transfer_id', 'movements', ['transfer_id'])
    op.create_table('merchant_payments',
    sa.Column('id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('redemption_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=False),
    sa.Column('merchant_id', sa.Integer(), nullable=False),
    sa.Column('amount', sa.BigInteger(), nullable=False),
    sa.Column('status', sa.String(length=8), nullable=False),
    sa.Column('journal_id', sa.BigInteger().with_variant(sa.Integer(), 'sqlite'), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.Column('paid_at', sa.DateTime(), nullable=True),
    sa.CheckConstraint("(status = 'paid') = (journal_id IS NOT NULL AND paid_at IS NOT NULL)", name=op.f('ck_merchant_payments_paid_iff_journal')),
    sa.CheckConstraint("status IN ('waiting', 'paid')", name=op.f('ck_merchant_payments_status')),
    sa.CheckConstraint('amount > 0', name=op.f('ck_merchant_payments_amount_positive')),
    sa.ForeignKeyConstraint(['journal_id'], ['journals.id'], name=op.f('fk_merchant_payments_journal_id_journals')),
    sa.ForeignKeyConstraint(['merchant_id'], ['holders.id'], name=op.f('fk_merchant_payments_merchant_id_holders')),
    sa.ForeignKeyConstraint(['redemption_id'], ['reward_redemptions.id'], name=op.f('fk_merchant_payments_redemption_id_reward_redemptions')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_merchant_payments')),
    sa.UniqueConstraint('redemption_id', name=op.f('uq_merchant_payments_redemption_id'))
    )
    with op.batch_alter_table('merchant_payments', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_merchant_payments_merchant_id'), ['merchant_id'], unique=False)
    op.create_table('member_year_totals',
    sa.Column('programme_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('year', sa.Integer(), nullable=False),
    sa.Column('reduction_g', sa.BigInteger(), nullable=False),
    sa.CheckConstraint('reduction_g >= 0', name=op.f('ck_member_year_totals_nonnegative')),
    sa.ForeignKeyConstraint(['programme_id'], ['projects.id'], name=op.f('fk_member_year_totals_programme_id_projects')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_member_year_totals_user_id_users')),
    sa.PrimaryKeyConstraint('programme_id', 'user_id', 'year', name=op.f('pk_member_year_totals'))
    )
    with op.batch_alter_table('member_year_totals', schema=None) as batch_op:
        batch_op.create_index('ix_member_year_totals_board', ['year', 'reduction_g'], unique=False)

    op.create_table('recognised_batches',
    sa.Column('batch_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('processed_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['batch_id'], ['behaviour_batches.id'], name=op.f('fk_recognised_batches_batch_id_behaviour_batches')),
    sa.PrimaryKeyConstraint('batch_id', name=op.f('pk_recognised_batches'))
    )


def downgrade():
    op.drop_table('recognised_batches')
    with op.batch_alter_table('member_year_totals', schema=None) as batch_op:
        batch_op.drop_index('ix_member_year_totals_board')

    op.drop_table('member_year_totals')
    with op.batch_alter_table('merchant_payments', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_merchant_payments_merchant_id'))

    op.drop_table('merchant_payments')
    op.drop_index('ix_movements_transfer_id', table_name='movements')
    op.drop_index('ix_rewards_pool_inflows_pending', table_name='rewards_pool_inflows')
    op.drop_table('rewards_pool_inflows')
    with op.batch_alter_table('reward_redemptions', schema=None) as batch_op:
        batch_op.drop_index('ix_reward_redemptions_user')
        batch_op.drop_index(batch_op.f('ix_reward_redemptions_reward_id'))
        batch_op.drop_index(batch_op.f('ix_reward_redemptions_merchant_id'))

    op.drop_table('reward_redemptions')
    op.drop_table('programme_offers')
    with op.batch_alter_table('programme_periods', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_programme_periods_programme_id'))

    op.drop_table('programme_periods')
    op.drop_table('user_badges')
    op.drop_table('rewards_pool')
    with op.batch_alter_table('rewards', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_rewards_merchant_id'))

    op.drop_table('rewards')
