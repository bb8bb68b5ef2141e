"""points entries without foreign keys to points_accounts and behaviour_batches

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-03 15:00:00

A behaviour import credits one `earn` entry per member and batch: hundreds of thousands of rows in
one COPY, each of whose two key checks probed and share-locked its account and the (already locked)
batch, which tripled the cost of writing them. `registry.points.check` proves both references
instead, set-based, as `registry.behaviour.check_ledger` proves the events' batches.
"""
from alembic import op

# revision identifiers, used by Alembic.
revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade():
    with op.batch_alter_table('points_entries', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('fk_points_entries_user_id_points_accounts'), type_='foreignkey')
        batch_op.drop_constraint(op.f('fk_points_entries_batch_id_behaviour_batches'), type_='foreignkey')


def downgrade():
    with op.batch_alter_table('points_entries', schema=None) as batch_op:
        batch_op.create_foreign_key(op.f('fk_points_entries_user_id_points_accounts'), 'points_accounts',
                                    ['user_id'], ['user_id'])
        batch_op.create_foreign_key(op.f('fk_points_entries_batch_id_behaviour_batches'), 'behaviour_batches',
                                    ['batch_id'], ['id'])
