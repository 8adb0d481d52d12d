"""rooms service: rooms and memberships, the create_room command, GET/POST /rooms, RoomCreated."""
