"""learning_mcp.server"""
