"""behaviour events: the programme-day index that closing a programme period reads

Revision ID: 0010_incl_gaps
Revises: 0009
Create Date: 2026-11-23 16:10:00

`registry.programme_periods` sums a programme's accepted grams of the days after a period's end
through one range of this index (partial: accepted rows; on PostgreSQL it includes reduction_g, so
the sum is an index-only scan) instead of scanning every behaviour event.
"""
import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision = '0010_incl_gaps'
down_revision = '0009'
branch_labels = None
depends_on = None

ACCEPTED = sa.text("status = 'accepted'")


def upgrade():
    op.create_index('ix_behaviour_events_programme_day', 'behaviour_events', ['programme_id', 'day'],
                    postgresql_include=['reduction_g'], sqlite_where=ACCEPTED, postgresql_where=ACCEPTED)


def downgrade():
    op.drop_index('ix_behaviour_events_programme_day', table_name='behaviour_events')
