"""behaviour feeds and the points ledger

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23 11:40:00.000000

Written by hand to match registry.partners (partners, their behaviour types, programme members and
their external ids), registry.behaviour (batches, every received row) and
registry.points (accounts and the ledger).
"""
from alembic import op
import sqlalchemy as sa


# revision identifiers, used by Alembic.
revision = '0008'
down_revision = '0007'
branch_labels = None
depends_on = None

BigKey = sa.BigInteger().with_variant(sa.Integer(), 'sqlite')
ACCEPTED = sa.text("status = 'accepted'")


def upgrade():
    op.create_table('behaviour_partners',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=40), nullable=False),
    sa.Column('name', sa.String(length=200), nullable=False),
    sa.Column('kind', sa.String(length=20), nullable=False),
    sa.Column('programme_id', sa.Integer(), nullable=False),
    sa.Column('region', sa.String(length=32), nullable=False),
    sa.Column('secret', sa.String(length=64), nullable=False),
    sa.Column('active', sa.Boolean(), nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.CheckConstraint("kind IN ('transit', 'bike_share', 'utility', 'sorting_station', 'other')",
                       name=op.f('ck_behaviour_partners_kind')),
    sa.ForeignKeyConstraint(['programme_id'], ['projects.id'], name=op.f('fk_behaviour_partners_programme_id_projects')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_behaviour_partners')),
    sa.UniqueConstraint('code', name=op.f('uq_behaviour_partners_code'))
    )
    op.create_index(op.f('ix_behaviour_partners_programme_id'), 'behaviour_partners', ['programme_id'])
    op.create_table('behaviour_partner_types',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('partner_id', sa.Integer(), nullable=False),
    sa.Column('code', sa.String(length=16), nullable=False),
    sa.ForeignKeyConstraint(['partner_id'], ['behaviour_partners.id'], name=op.f('fk_behaviour_partner_types_partner_id_behaviour_partners')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_behaviour_partner_types')),
    sa.UniqueConstraint('partner_id', 'code', name=op.f('uq_behaviour_partner_types_partner_id_code'))
    )
    op.create_table('behaviour_members',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('programme_id', sa.Integer(), nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('city', sa.String(length=64), nullable=False),
    sa.Column('district', sa.String(length=64), nullable=True),
    sa.Column('community', sa.String(length=100), nullable=True),
    sa.Column('reduction_g', sa.BigInteger(), nullable=False),
    sa.Column('enrolled_at', sa.DateTime(), nullable=False),
    sa.CheckConstraint('reduction_g >= 0', name=op.f('ck_behaviour_members_reduction_nonnegative')),
    sa.ForeignKeyConstraint(['programme_id'], ['projects.id'], name=op.f('fk_behaviour_members_programme_id_projects')),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_behaviour_members_user_id_users')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_behaviour_members')),
    sa.UniqueConstraint('programme_id', 'user_id', name=op.f('uq_behaviour_members_programme_id_user_id'))
    )
    if op.get_bind().dialect.name == 'postgresql':
        # room on each page: the per-chunk update of reduction_g stays a HOT update
        op.execute('ALTER TABLE behaviour_members SET (fillfactor = 70)')
    op.create_index(op.f('ix_behaviour_members_user_id'), 'behaviour_members', ['user_id'])
    op.create_table('behaviour_external_ids',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('partner_id', sa.Integer(), nullable=False),
    sa.Column('external_id', sa.String(length=64), nullable=False),
    sa.Column('member_id', sa.Integer(), nullable=False),
    sa.ForeignKeyConstraint(['member_id'], ['behaviour_members.id'], name=op.f('fk_behaviour_external_ids_member_id_behaviour_members')),
    sa.ForeignKeyConstraint(['partner_id'], ['behaviour_partners.id'], name=op.f('fk_behaviour_external_ids_partner_id_behaviour_partners')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_behaviour_external_ids')),
    sa.UniqueConstraint('partner_id', 'external_id', name=op.f('uq_behaviour_external_ids_partner_id_external_id'))
    )
    op.create_index(op.f('ix_behaviour_external_ids_member_id'), 'behaviour_external_ids', ['member_id'])
    op.create_table('behaviour_batches',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('partner_id', sa.Integer(), nullable=False),
    sa.Column('ref', sa.String(length=100), nullable=False),
    sa.Column('source', sa.String(length=8), nullable=False),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('received_at', sa.DateTime(), nullable=False),
    sa.Column('rows_done', sa.Integer(), nullable=False),
    sa.Column('accepted', sa.Integer(), nullable=False),
    sa.Column('rejected', sa.Integer(), nullable=False),
    sa.Column('reduction_g', sa.BigInteger(), nullable=False),
    sa.Column('points', sa.BigInteger(), nullable=False),
    sa.Column('completed_at', sa.DateTime(), nullable=True),
    sa.CheckConstraint("status IN ('open', 'complete')", name=op.f('ck_behaviour_batches_status')),
    sa.CheckConstraint("source IN ('api', 'csv')", name=op.f('ck_behaviour_batches_source')),
    sa.ForeignKeyConstraint(['partner_id'], ['behaviour_partners.id'], name=op.f('fk_behaviour_batches_partner_id_behaviour_partners')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_behaviour_batches')),
    sa.UniqueConstraint('partner_id', 'ref', name=op.f('uq_behaviour_batches_partner_id_ref'))
    )
    op.create_table('behaviour_events',
    sa.Column('batch_id', sa.Integer(), nullable=False),
    sa.Column('line_no', sa.Integer(), nullable=False),
    sa.Column('partner_id', sa.Integer(), nullable=False),
    sa.Column('programme_id', sa.Integer(), nullable=False),
    sa.Column('event_id', sa.String(length=64), nullable=False),
    sa.Column('user_ref', sa.String(length=64), nullable=True),
    sa.Column('user_id', sa.BigInteger(), nullable=True),
    sa.Column('code', sa.String(length=16), nullable=True),
    sa.Column('started_at', sa.DateTime(), nullable=True),
    sa.Column('ended_at', sa.DateTime(), nullable=True),
    sa.Column('day', sa.Date(), nullable=True),
    sa.Column('variant', sa.String(length=32), nullable=True),
    sa.Column('quantity', sa.String(length=24), nullable=True),
    sa.Column('reduction_g', sa.BigInteger(), nullable=False),
    sa.Column('points', sa.Integer(), nullable=False),
    sa.Column('factors', sa.String(length=200), nullable=True),
    sa.Column('status', sa.String(length=10), nullable=False),
    sa.Column('reason', sa.String(length=32), nullable=True),
    sa.Column('detail', sa.String(length=300), nullable=True),
    sa.CheckConstraint("status IN ('accepted', 'rejected')", name=op.f('ck_behaviour_events_status')),
    sa.CheckConstraint("(status = 'accepted') = (reason IS NULL)", name=op.f('ck_behaviour_events_reason_iff_rejected')),
    sa.CheckConstraint("status = 'rejected' OR (user_id IS NOT NULL AND started_at IS NOT NULL)",
                       name=op.f('ck_behaviour_events_accepted_complete')),
    sa.CheckConstraint('reduction_g >= 0 AND points >= 0', name=op.f('ck_behaviour_events_nonnegative')),
    sa.PrimaryKeyConstraint('batch_id', 'line_no', name=op.f('pk_behaviour_events'))
    )
    op.create_index('uq_behaviour_events_accepted', 'behaviour_events', ['partner_id', 'event_id'], unique=True,
                    sqlite_where=ACCEPTED, postgresql_where=ACCEPTED)
    op.create_index('ix_behaviour_events_user_span', 'behaviour_events', ['user_id', 'code', 'started_at'],
                    sqlite_where=ACCEPTED, postgresql_where=ACCEPTED)
    op.create_table('points_accounts',
    sa.Column('user_id', sa.Integer(), autoincrement=False, nullable=False),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['user_id'], ['users.id'], name=op.f('fk_points_accounts_user_id_users')),
    sa.PrimaryKeyConstraint('user_id', name=op.f('pk_points_accounts'))
    )
    op.create_table('points_entries',
    sa.Column('id', BigKey, nullable=False),
    sa.Column('user_id', sa.Integer(), nullable=False),
    sa.Column('kind', sa.String(length=8), nullable=False),
    sa.Column('points', sa.BigInteger(), nullable=False),
    sa.Column('expires_on', sa.Date(), nullable=True),
    sa.Column('batch_id', sa.Integer(), nullable=True),
    sa.Column('ref', sa.String(length=100), nullable=True),
    sa.Column('reason', sa.Text(), nullable=True),
    sa.Column('actor_user_id', sa.Integer(), nullable=True),
    sa.Column('created_at', sa.DateTime(), nullable=False),
    sa.CheckConstraint("(kind = 'earn' AND points > 0 AND expires_on IS NOT NULL)"
                       " OR (kind IN ('redeem', 'expire') AND points < 0)"
                       " OR (kind = 'adjust' AND points <> 0 AND (points < 0 OR expires_on IS NOT NULL))",
                       name=op.f('ck_points_entries_kind_sign')),
    sa.ForeignKeyConstraint(['actor_user_id'], ['users.id'], name=op.f('fk_points_entries_actor_user_id_users')),
    sa.ForeignKeyConstraint(['batch_id'], ['behaviour_batches.id'], name=op.f('fk_points_entries_batch_id_behaviour_batches')),
    sa.ForeignKeyConstraint(['user_id'], ['points_accounts.user_id'], name=op.f('fk_points_entries_user_id_points_accounts')),
    sa.PrimaryKeyConstraint('id', name=op.f('pk_points_entries'))
    )
    op.create_index('ix_points_entries_user_id', 'points_entries', ['user_id', 'id'])
    op.create_index(op.f('ix_points_entries_batch_id'), 'points_entries', ['batch_id'])
    op.create_index('uq_points_entries_redeem_ref', 'points_entries', ['ref'], unique=True,
                    sqlite_where=sa.text("kind = 'redeem'"), postgresql_where=sa.text("kind = 'redeem'"))


def downgrade():
    op.drop_table('points_entries')
    op.drop_table('points_accounts')
    op.drop_table('behaviour_events')
    op.drop_table('behaviour_batches')
    op.drop_table('behaviour_external_ids')
    op.drop_table('behaviour_members')
    op.drop_table('behaviour_partner_types')
    op.drop_table('behaviour_partners')
