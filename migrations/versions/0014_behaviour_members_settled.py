"""behaviour batches settle their members' records at the end; the span index names user_id

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-06 21:30:00

`behaviour_batches.members_upto`: the lines of the batch whose accepted grams are in their members'
records (`behaviour_members.reduction_g`). An import adds them when it completes the batch, or
whoever needs the records first does (`registry.behaviour.settle`), instead of updating the
members of every chunk (~18,000 member updates a chunk of 20,000 rows, ~900,000 a million rows, for
~200,000 members). Every batch recorded so far updated its members chunk by chunk: settled whole.

The span index's predicate also requires `user_id IS NOT NULL` (always true of an accepted event:
`ck_behaviour_events_accepted_complete`): the lookup's span probe, `user_id = ...`, implies it; the
duplicate probe does not, so it cannot be planned as a whole scan of this index per row (as
PostgreSQL did while its statistics said the events table was empty).
"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None

ACCEPTED = sa.text("status = 'accepted'")
SPAN = sa.text("status = 'accepted' AND user_id IS NOT NULL")


def upgrade():
    with op.batch_alter_table('behaviour_batches', schema=None) as batch_op:
        batch_op.add_column(sa.Column('members_upto', sa.Integer(), nullable=False, server_default='0'))
        batch_op.create_check_constraint(op.f('ck_behaviour_batches_members_settled'), 'members_upto >= 0 AND members_upto <= rows_done')
    op.execute("UPDATE behaviour_batches SET members_upto = rows_done")
    op.drop_index('ix_behaviour_events_user_span', table_name='behaviour_events')
    op.create_index('ix_behaviour_events_user_span', 'behaviour_events', ['user_id', 'code', 'started_at'],
                    sqlite_where=SPAN, postgresql_where=SPAN)


def downgrade():
    op.drop_index('ix_behaviour_events_user_span', table_name='behaviour_events')
    op.create_index('ix_behaviour_events_user_span', 'behaviour_events', ['user_id', 'code', 'started_at'],
                    sqlite_where=ACCEPTED, postgresql_where=ACCEPTED)
    with op.batch_alter_table('behaviour_batches', schema=None) as batch_op:
        batch_op.drop_constraint(op.f('ck_behaviour_batches_members_settled'), type_='check')
        batch_op.drop_column('members_upto')
