"""learning_mcp.tools"""
