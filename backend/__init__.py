"""learning_mcp.backend"""
